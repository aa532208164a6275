from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from audit.admin import AuditedModelAdmin
from catalog import services
from catalog.models import Application, Environment, Release, Target
from core.admin import ReadOnlyModelAdmin


class DeploymentInputsAdmin(AuditedModelAdmin):
    """An object whose fields decide what deployments run (deployments.inputs): every
    addition, change or deletion here tells the approval workflow, which reopens the
    approvals whose concern changed. A deployment already made runs what it was made
    with; a change whose approvals are outdated does not start."""

    def scope(self, obj) -> tuple[int | None, int | None, str]:
        raise NotImplementedError

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        self._edited(form.instance)

    def delete_model(self, request, obj):
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        self._edited(obj)

    def _edited(self, obj) -> None:
        application_id, environment_id, what = self.scope(obj)
        services.deployment_inputs_edited(application_id=application_id,
                                          environment_id=environment_id, what=what)


@admin.register(Environment)
class EnvironmentAdmin(DeploymentInputsAdmin, GuardedModelAdmin):
    # The lock and its reason are audited here; the object permissions granted on
    # the guardian pages (Object permissions) by audit.access.
    list_display = ["name", "slug", "order", "production", "locked"]

    def get_readonly_fields(self, request, obj=None):
        # Locking and unlocking go through the environment page's service (an unlock of
        # Production asks for a fresh second factor); whether an environment is
        # Production is set when it is made, never switched off around that rule.
        fixed = ["locked", "lock_reason"]
        return [*fixed, "production"] if obj is not None else fixed

    def scope(self, obj):
        return None, obj.pk, f"the deployment settings of {obj.name} changed after approval"


@admin.register(Application)
class ApplicationAdmin(DeploymentInputsAdmin):
    list_display = ["name", "slug", "team", "executor"]

    def scope(self, obj):
        return (obj.pk, None,
                f"the executor or executor settings of {obj.name} changed after approval")


@admin.register(Target)
class TargetAdmin(DeploymentInputsAdmin):
    list_display = ["application", "environment", "name", "address"]

    def scope(self, obj):
        return (obj.application_id, obj.environment_id,
                f"the targets of {obj.application.slug} in {obj.environment.slug} changed "
                "after approval")


@admin.register(Release)
class ReleaseAdmin(ReadOnlyModelAdmin):
    """Releases are immutable and registered through the service that checks their
    artifact's source and digest (SOP 10.1) and audits them."""

    list_display = ["application", "version", "commit_sha", "created_at"]
