from django import forms
from django.contrib import admin, messages
from guardian.admin import GuardedModelAdmin

from audit.admin import AuditedModelAdmin
from catalog import services
from catalog.models import Application, Environment, HostKey, Release, Target
from core.admin import ReadOnlyModelAdmin
from core.errors import DomainError


class DeploymentInputsAdmin(AuditedModelAdmin):
    """An object whose fields decide what deployments run (deployments.inputs): every
    addition, change or deletion here tells the approval workflow, which reopens the
    approvals whose concern changed. A deployment already made runs what it was made
    with; a change whose approvals are outdated does not start."""

    def scope(self, obj) -> tuple[int | None, int | None, str]:
        raise NotImplementedError

    def runs_with(self, obj):
        """What of ``obj`` deployments run with; None: every edit counts."""
        return None

    def save_model(self, request, obj, form, change):
        if change:
            request._runs_with_before = self.runs_with(self._fresh(obj))
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        before = getattr(request, "_runs_with_before", None) if change else None
        request._runs_with_before = None
        if before is not None and before == self.runs_with(self._fresh(form.instance)):
            return  # an edit of something deployments do not run with reopens nothing
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
    filter_horizontal = ["depends_on"]

    def runs_with(self, obj):
        # Not its name, team or dependencies (which say which changes conflict,
        # approvals.conflicts): what a deployment runs is the executor and its settings.
        return [obj.executor, obj.executor_settings]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None and "depends_on" in form.base_fields:
            # An application does not depend on itself.
            form.base_fields["depends_on"].queryset = Application.objects.exclude(pk=obj.pk)
        return form

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


class HostKeyForm(forms.ModelForm):
    line = forms.CharField(
        label="known_hosts line", widget=forms.Textarea(attrs={"rows": 3, "cols": 100}),
        help_text="One line as ssh-keyscan prints it (host key-type key), checked against "
                  "the server's own console: ssh-keygen -lf shows its fingerprint.")

    class Meta:
        model = HostKey
        fields = ["environment"]

    def clean_line(self):
        try:
            services.parse_known_hosts_line(self.cleaned_data["line"])
        except DomainError as exc:
            raise forms.ValidationError((exc.fields or {}).get("line", [exc.detail])[0]) \
                from None
        return self.cleaned_data["line"]


@admin.register(HostKey)
class HostKeyAdmin(admin.ModelAdmin):
    """Pinning and removing go through the catalogue's service, which audits them; a
    pinned key is never edited in place (remove it and pin the new one)."""

    list_display = ["environment", "host", "key_type", "fingerprint", "added_by", "added_at"]
    list_filter = ["environment"]
    form = HostKeyForm

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def get_fields(self, request, obj=None):
        return ["environment", "line"] if obj is None else [
            "environment", "host", "key_type", "fingerprint", "key", "added_by", "added_at"]

    def save_model(self, request, obj, form, change):
        try:
            pinned = services.host_key_pin(actor=request.user,
                                           environment=form.cleaned_data["environment"],
                                           line=form.cleaned_data["line"])
        except DomainError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        obj.pk = pinned[0].pk

    def save_related(self, request, form, formsets, change):
        return

    def delete_model(self, request, obj):
        services.host_key_remove(actor=request.user, host_key=obj,
                                 reason="removed in the admin")

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)
