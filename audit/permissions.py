"""Who may read the audit trail: the auditors (the model permission
``audit.view_audit_trail``, the ``auditor`` group in the demo) and superusers."""

from __future__ import annotations

VIEW_AUDIT_TRAIL = "audit.view_audit_trail"


def is_auditor(user) -> bool:
    return user.is_authenticated and (
        user.is_superuser or user.has_perm(VIEW_AUDIT_TRAIL)
    )
