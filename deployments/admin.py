from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from deployments.models import (
    AnalysisVerdict,
    Application,
    Deployment,
    Environment,
    Release,
    Target,
)
from portal.admin import AuditedModelAdmin


@admin.register(Environment)
class EnvironmentAdmin(AuditedModelAdmin, GuardedModelAdmin):
    # The lock and its reason are audited here; the object permissions granted on
    # the guardian pages (Object permissions) by portal.access_audit.
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


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["pk", "application", "environment", "release", "kind", "status",
                    "created_at"]
    list_filter = ["status", "environment"]

    def has_change_permission(self, request, obj=None):
        return False  # executions change only through the engine


@admin.register(AnalysisVerdict)
class AnalysisVerdictAdmin(admin.ModelAdmin):
    list_display = ["deployment", "phase", "provider", "outcome", "action", "created_at"]
    list_filter = ["outcome", "action"]

    def has_change_permission(self, request, obj=None):
        return False  # verdicts are evidence
