from django.contrib import admin

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


class PolicyGateInline(admin.TabularInline):
    model = PolicyGate
    extra = 0


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(AuditedModelAdmin):
    list_display = ["environment", "change_type", "requires_window", "requires_promotion",
                    "requires_on_call", "requires_rollback_plan", "passes_freeze",
                    "opens_review"]
    list_filter = ["environment", "change_type"]
    inlines = [PolicyGateInline]

    def audit_snapshot(self, obj) -> dict:
        # The gates are edited inline; their roles and counts are part of the policy.
        return {**super().audit_snapshot(obj),
                "gates": {gate.role: gate.required for gate in obj.gates.all()}}


@admin.register(ChecklistTemplate)
class ChecklistTemplateAdmin(AuditedModelAdmin):
    list_display = ["text", "environment", "change_type", "kind", "position", "auto_check"]
    list_filter = ["environment", "change_type", "kind"]


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(AuditedModelAdmin):
    list_display = ["environment", "weekday", "start_time", "end_time", "timezone"]
    list_filter = ["environment"]


@admin.register(Freeze)
class FreezeAdmin(AuditedModelAdmin):
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
