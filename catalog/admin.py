from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from catalog.models import Application, Environment, Release, Target
from core.admin import AuditedModelAdmin


@admin.register(Environment)
class EnvironmentAdmin(AuditedModelAdmin, GuardedModelAdmin):
    # The lock and its reason are audited here; the object permissions granted on
    # the guardian pages (Object permissions) by core.access_audit.
    list_display = ["name", "slug", "order", "locked"]


@admin.register(Application)
class ApplicationAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "team", "executor"]


@admin.register(Target)
class TargetAdmin(AuditedModelAdmin):
    list_display = ["application", "environment", "name", "address"]


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["application", "version", "commit_sha", "created_at"]

    def has_change_permission(self, request, obj=None):
        return False  # releases are immutable
