"""State changes of change requests: request, submit, edit, decide, withdraw, deploy, cancel.

Every rule of the approval workflow is here, once, in one module per topic; pages, the
API and tasks call these functions and import them from here.
"""

from __future__ import annotations

from approvals.services.changes import (
    EDITABLE_FIELDS,
    change_request_cancel,
    change_request_create,
    change_request_submit,
    change_request_update,
    may_cancel,
)
from approvals.services.checklists import (
    checklist_item_set,
    may_tick_checklist,
)
from approvals.services.closing import (
    change_request_deployment_finished,
    changes_close_finished,
)
from approvals.services.deadlines import (
    change_approvals_lapse,
    change_gates_expire,
    deadlines_enforce,
    expiry_warning_lead,
)
from approvals.services.decisions import (
    approval_withdraw,
    gate_approve,
    gate_reject,
    may_decide,
)
from approvals.services.delegations import (
    MAX_DELEGATION,
    delegation_create,
    delegation_revoke,
)
from approvals.services.fingerprints import (
    CONCERNS,
    change_version,
    fingerprint,
    run_inputs_for_many,
)
from approvals.services.governing import (  # policies as code (docs/policies.md)
    active_document,
    active_version,
)
from approvals.services.meetings import (  # CAB meetings
    agenda_build,
    agenda_item_add,
    agenda_item_defer,
    attendance_mark,
    meeting_close,
    meeting_decide,
    meeting_minutes,
    meeting_next,
    meeting_starts_after,
    meetings_plan,
    meetings_send_agendas,
    present_members,
)
from approvals.services.policy_versions import (
    ExamplesFailed,
    check_document,
    may_decide_policy,
    may_propose,
    pending_roles,
    policy_bootstrap,
    policy_decide,
    policy_propose,
)
from approvals.services.reopening import (
    changes_reopen_for_configuration,
    changes_reopen_for_deployment_inputs,
)
from approvals.services.reviews import (
    review_close,
)
from approvals.services.risk import (
    risk_assess,
)
from approvals.services.scheduling import (
    change_request_deploy,
    changes_start_scheduled,
    deployment_start_check,
)
from approvals.services.viewing import change_view_record  # quality of approvals

__all__ = [
    "agenda_build",
    "agenda_item_add",
    "agenda_item_defer",
    "attendance_mark",
    "meeting_close",
    "meeting_decide",
    "meeting_minutes",
    "meeting_next",
    "meeting_starts_after",
    "meetings_plan",
    "meetings_send_agendas",
    "present_members",
    "CONCERNS",
    "EDITABLE_FIELDS",
    "MAX_DELEGATION",
    "approval_withdraw",
    "change_approvals_lapse",
    "change_gates_expire",
    "change_request_cancel",
    "change_request_create",
    "change_request_deploy",
    "change_request_deployment_finished",
    "change_request_submit",
    "change_request_update",
    "change_version",
    "change_view_record",
    "changes_close_finished",
    "changes_reopen_for_configuration",
    "changes_reopen_for_deployment_inputs",
    "changes_start_scheduled",
    "checklist_item_set",
    "deadlines_enforce",
    "delegation_create",
    "delegation_revoke",
    "deployment_start_check",
    "expiry_warning_lead",
    "fingerprint",
    "gate_approve",
    "gate_reject",
    "may_cancel",
    "may_decide",
    "may_tick_checklist",
    "review_close",
    "risk_assess",
    "run_inputs_for_many",
    # policies as code
    "ExamplesFailed", "active_document", "active_version", "check_document",
    "may_decide_policy", "may_propose", "pending_roles", "policy_bootstrap", "policy_decide",
    "policy_propose",
]
