"""Read queries behind the auditor pages: history, evidence, compliance, access review,
and the exports of the audit trail.

- ``filters``: the audit trail's filters and keyset order, the deployment history;
- ``compliance``: SOP 13.2 judged per deployment, the evidence behind one deployment;
- ``access_review``: who holds what on which environment, and how they used it;
- ``export``: the export lines built by PostgreSQL and streamed by ``COPY``;
- ``quality``: how fast, how often unread and between whom approvals are given.
"""

from reporting.audit_selectors.access_review import AccessRow, Factor, access_review
from reporting.audit_selectors.compliance import (
    DONE,
    MISSING,
    NOT_RECORDED,
    SOP_13_2,
    Compliance,
    ComplianceItem,
    compliance_for,
    evidence,
    evidence_events,
)
from reporting.audit_selectors.export import (
    EXPORT_BATCH_BYTES,
    FALLBACK_MARK,
    export_csv_line_sql,
    export_jsonl_line_sql,
    export_stream,
)
from reporting.audit_selectors.filters import (
    PAGE_SIZE,
    DeploymentFilters,
    EventFilters,
    changes_by_id,
    deployment_history,
    events_matching,
)
from reporting.audit_selectors.quality import ApprovalQuality, approval_quality

__all__ = [
    "DONE", "EXPORT_BATCH_BYTES", "FALLBACK_MARK", "MISSING", "NOT_RECORDED", "PAGE_SIZE",
    "SOP_13_2", "AccessRow", "Compliance", "ComplianceItem", "DeploymentFilters",
    "EventFilters", "Factor", "access_review", "changes_by_id", "compliance_for",
    "deployment_history", "events_matching", "evidence", "evidence_events",
    "export_csv_line_sql", "export_jsonl_line_sql", "export_stream",
    "ApprovalQuality", "approval_quality",
]
