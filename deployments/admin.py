from django.contrib import admin

from core.admin import ReadOnlyModelAdmin
from deployments.models import AnalysisVerdict, Deployment


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyModelAdmin):
    """Deployments start only through the approval workflow and change only through the
    engine; a row added here would be picked up by the worker without any gate."""

    list_display = ["pk", "application", "environment", "release", "kind", "status",
                    "created_at"]
    list_filter = ["status", "environment"]


@admin.register(AnalysisVerdict)
class AnalysisVerdictAdmin(ReadOnlyModelAdmin):
    """Verdicts are evidence."""

    list_display = ["deployment", "phase", "provider", "outcome", "action", "created_at"]
    list_filter = ["outcome", "action"]
