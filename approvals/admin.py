from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from approvals import services
from approvals.models import (
    ApprovalPolicy,
    CabSchedule,
    ChangeRequest,
    ChecklistTemplate,
    Delegation,
    Freeze,
    MaintenanceWindow,
    PolicyGate,
    PolicyVersion,
)
from audit.admin import AuditedModelAdmin
from core.admin import ReadOnlyModelAdmin


class CompiledFromPolicyAdmin(ReadOnlyModelAdmin):
    """Rows compiled from the active policy document (docs/policies.md): shown for
    reference, changed only by a new policy version, which is reviewed, approved and
    audited like a change. Editing them here would make decisions drift from the
    document that names them."""

    def _say_where(self, request) -> None:
        active = services.active_version()
        number = f" version {active.number}" if active is not None else ""
        messages.info(request, format_html(
            "These rows are compiled from the policy document{}. To change them, propose "
            'a new version on the <a href="{}">policy page</a> (or <code>manage.py policy '
            "import</code>, <code>portalctl policy import</code>).",
            number, reverse("policies")))

    def changelist_view(self, request, extra_context=None):
        self._say_where(request)
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._say_where(request)
        return super().change_view(request, object_id, form_url, extra_context)


class PolicyGateInline(admin.TabularInline):
    model = PolicyGate
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(CompiledFromPolicyAdmin):
    list_display = ["environment", "change_type", "requires_window", "requires_promotion",
                    "requires_on_call", "requires_rollback_plan", "passes_freeze",
                    "opens_review"]
    list_filter = ["environment", "change_type"]
    inlines = [PolicyGateInline]


@admin.register(ChecklistTemplate)
class ChecklistTemplateAdmin(AuditedModelAdmin):
    list_display = ["text", "environment", "change_type", "kind", "position", "auto_check"]
    list_filter = ["environment", "change_type", "kind"]


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(CompiledFromPolicyAdmin):
    list_display = ["environment", "weekday", "start_time", "end_time", "timezone"]
    list_filter = ["environment"]


@admin.register(Freeze)
class FreezeAdmin(CompiledFromPolicyAdmin):
    list_display = ["environment", "reason", "starts_at", "ends_at", "recurs_yearly"]
    list_filter = ["environment"]


@admin.register(Delegation)
class DelegationAdmin(ReadOnlyModelAdmin):
    """Delegations are created and revoked on their page, where they are audited."""

    list_display = ["delegator", "delegate", "environment", "role", "expires_at", "revoked_at"]


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ReadOnlyModelAdmin):
    # Changes, their gates and decisions move only through the approval workflow,
    # which audits them; the admin neither adds, edits nor deletes them.
    list_display = ["reference", "release", "environment", "change_type", "status", "created_at"]
    list_filter = ["status", "environment", "change_type"]


# CAB meetings (docs/cab.md).
@admin.register(CabSchedule)
class CabScheduleAdmin(AuditedModelAdmin):
    list_display = ["name", "environment", "weekday", "time", "timezone", "duration_minutes",
                    "chair", "agenda_lead_hours", "active"]
    list_filter = ["environment", "active"]


# Policy versions (docs/policies.md) are proposed, decided and activated by their
# services, which audit them; shown here for reference.
@admin.register(PolicyVersion)
class PolicyVersionAdmin(ReadOnlyModelAdmin):
    list_display = ["number", "status", "digest", "proposed_by", "effective_at",
                    "activated_at"]
    list_filter = ["status"]
