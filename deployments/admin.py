from django.contrib import admin

from deployments.models import AnalysisVerdict, Deployment


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
