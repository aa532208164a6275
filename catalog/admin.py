from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from catalog.models import Application, Environment, Release, Target
from core.admin import AuditedModelAdmin, ReadOnlyModelAdmin


@admin.register(Environment)
class EnvironmentAdmin(AuditedModelAdmin, GuardedModelAdmin):
    # The lock and its reason are audited here; the object permissions granted on
    # the guardian pages (Object permissions) by core.access_audit.
    list_display = ["name", "slug", "order", "production", "locked"]

    def get_readonly_fields(self, request, obj=None):
        # Locking and unlocking go through the environment page's service (an unlock of
        # Production asks for a fresh second factor); whether an environment is
        # Production is set when it is made, never switched off around that rule.
        fixed = ["locked", "lock_reason"]
        return [*fixed, "production"] if obj is not None else fixed


@admin.register(Application)
class ApplicationAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "team", "executor"]


@admin.register(Target)
class TargetAdmin(AuditedModelAdmin):
    list_display = ["application", "environment", "name", "address"]


@admin.register(Release)
class ReleaseAdmin(ReadOnlyModelAdmin):
    """Releases are immutable and registered through the service that checks their
    artifact's source and digest (SOP 10.1) and audits them."""

    list_display = ["application", "version", "commit_sha", "created_at"]
