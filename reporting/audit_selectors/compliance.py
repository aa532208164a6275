"""SOP 13.2 compliance of each deployment, and the evidence behind one deployment."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Min, Q

from approvals.models import Approval, ChecklistItem, Gate
from audit.models import AuditEvent
from audit.trail import compute_hash
from deployments.models import Deployment, DeploymentStep
from reporting.audit_selectors.filters import changes_by_id

# ---------------------------------------------------------------------------
# SOP 13.2 compliance checklist, per deployment

SOP_13_2 = [
    ("change_approval", "Change approval documented"),
    ("security_review", "Security review completed"),
    ("backup", "Backup procedures executed"),
    ("monitoring", "Monitoring configured"),
    ("rollback_tested", "Rollback plan tested"),
    ("stakeholders", "Stakeholder notification sent"),
    ("post_review", "Post-deployment review conducted"),
]

DONE, MISSING, NOT_RECORDED = "done", "missing", "not_recorded"


@dataclass
class ComplianceItem:
    key: str
    text: str
    status: str
    evidence: str


@dataclass
class Compliance:
    items: list[ComplianceItem] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(1 for i in self.items if i.status == DONE)

    @property
    def complete(self) -> bool:
        return self.done == len(self.items)

    @property
    def summary(self) -> str:
        return f"{self.done}/{len(self.items)}"


def _checklist_items(change_ids) -> dict[int, dict[str, object]]:
    """Ticked SOP 13.2 compliance items, {change id: {lowercased text: item}}."""
    found: dict[int, dict[str, object]] = defaultdict(dict)
    for item in (ChecklistItem.objects.filter(change_id__in=change_ids, kind="compliance")
                 .select_related("done_by")):
        found[item.change_id][item.text.strip().lower()] = item
    return found


@dataclass
class _ComplianceFacts:
    """What the SOP 13.2 items of some deployments are judged on, read at once."""

    changes: dict
    gates: dict[int, list]  # change id -> its gates
    approvals: dict[int, list]  # gate id -> its standing approvals
    steps: dict[int, dict[str, object]]  # deployment id -> {"backup"|"health_check": step}
    ticked: dict[int, dict[str, object]]  # change id -> {item text: checklist item}
    reviewed: set[str]  # ids of changes whose post-implementation review closed
    first_rollback: dict[int, datetime]  # application id -> its first successful rollback


def _compliance_facts(deployments: list, changes: dict | None = None) -> _ComplianceFacts:
    change_ids = {d.change_id for d in deployments if d.change_id}
    gates: dict[int, list] = defaultdict(list)
    for gate in Gate.objects.filter(change_id__in=change_ids):
        gates[gate.change_id].append(gate)
    approvals: dict[int, list] = defaultdict(list)
    for approval in (Approval.objects.filter(change_id__in=change_ids, decision="approved",
                                             withdrawn_at__isnull=True)
                     .select_related("approver")):
        approvals[approval.gate_id].append(approval)
    steps: dict[int, dict[str, object]] = defaultdict(dict)
    for step in DeploymentStep.objects.filter(deployment__in=[d.pk for d in deployments],
                                              name__in=["backup", "health_check"]):
        steps[step.deployment_id][step.name] = step
    reviewed = set(AuditEvent.objects.filter(
        action="review.closed", object_type="changerequest",
        object_id__in=[str(i) for i in change_ids]).values_list("object_id", flat=True))
    # A rollback of the application that succeeded before a deployment, in any
    # environment (typically staging), shows that its rollback path works.
    app_ids = {d.application_id for d in deployments}
    first_rollback = dict(
        Deployment.objects.filter(application_id__in=app_ids, kind="rollback",
                                  status="succeeded")
        .values("application_id").annotate(first=Min("created_at"))
        .values_list("application_id", "first")) if app_ids else {}
    return _ComplianceFacts(changes=changes_by_id(change_ids) if changes is None else changes,
                            gates=gates,
                            approvals=approvals, steps=steps,
                            ticked=_checklist_items(change_ids), reviewed=reviewed,
                            first_rollback=first_rollback)


def _change_approval_item(d, change, facts: _ComplianceFacts,
                          evidence: bool = True) -> tuple[str, str]:
    change_gates = facts.gates.get(d.change_id, [])
    if change is None:
        return MISSING, "no change request released this deployment"
    if not change_gates:
        return MISSING, f"{change.reference} had no approval gates"
    short = [g for g in change_gates if len(facts.approvals.get(g.pk, [])) < g.required]
    if not evidence:
        return (MISSING if short else DONE), ""
    decided = ", ".join(
        f"{g.get_role_display()}: " + ", ".join(
            f"{a.approver.get_username()} {a.decided_at:%Y-%m-%d %H:%M}"
            for a in facts.approvals.get(g.pk, []))
        for g in change_gates)
    return (MISSING if short else DONE,
            (f"gates without their approvals: "
             f"{', '.join(g.get_role_display() for g in short)}; " if short else "")
            + decided)


def _security_review_item(d, facts: _ComplianceFacts) -> tuple[str, str]:
    security = [g for g in facts.gates.get(d.change_id, []) if g.role == "security"]
    scan = (d.release.checks or {}).get("security_scan") or {}
    if security and all(len(facts.approvals.get(g.pk, [])) >= g.required for g in security):
        who = ", ".join(a.approver.get_username()
                        for g in security for a in facts.approvals.get(g.pk, []))
        return DONE, f"security gate approved by {who}"
    if scan.get("status") == "passed":
        return DONE, ("security scan reported passed by CI"
                      + (f" ({scan['url']})" if scan.get("url") else ""))
    if scan.get("status") == "failed":
        return MISSING, "security scan reported failed"
    return NOT_RECORDED, "no security gate and no security scan reported"


def _step_item(d, name: str, what: str, facts: _ComplianceFacts) -> tuple[str, str]:
    """Backup procedures executed / monitoring configured: the deployment's own steps."""
    step = facts.steps.get(d.pk, {}).get(name)
    if step is None:
        return NOT_RECORDED, f"no {what} in this deployment"
    if step.status == "succeeded":
        return DONE, (f"{what} succeeded"
                      + (f" at {step.finished_at:%Y-%m-%d %H:%M:%S}" if step.finished_at
                         else ""))
    return MISSING, f"{what} {step.status}"


def _rollback_tested_item(d, change, facts: _ComplianceFacts) -> tuple[str, str]:
    plan = (change.rollback_plan or "").strip() if change else ""
    tested = facts.first_rollback.get(d.application_id)
    if not plan:
        return MISSING, "no rollback plan written"
    if tested and tested < d.created_at:
        return DONE, (f"rollback plan written; rollbacks of {d.application.slug} have "
                      f"succeeded since {tested:%Y-%m-%d}")
    return NOT_RECORDED, "rollback plan written; no test of it recorded"


def _post_review_item(change, facts: _ComplianceFacts) -> tuple[str, str]:
    if change is not None and str(change.pk) in facts.reviewed:
        return DONE, "post-implementation review closed by CAB"
    return NOT_RECORDED, "no review recorded"


def _with_tick(key: str, text: str, judged: tuple[str, str], ticks: dict) -> ComplianceItem:
    """An item the portal holds no evidence for is done when someone ticked it on the
    change's compliance checklist; the tick (who, when, note) is its evidence."""
    status, evidence = judged
    tick = ticks.get(text.lower())
    if status != DONE and tick is not None and tick.done:
        who = tick.done_by.get_username() if tick.done_by else "automatic check"
        when = f" on {tick.done_at:%Y-%m-%d %H:%M}" if tick.done_at else ""
        note = f": {tick.note}" if tick.note else ""
        status, evidence = DONE, f"ticked by {who}{when}{note}"
    return ComplianceItem(key, text, status, evidence)


def compliance_for(deployments, *, changes: dict | None = None,
                   evidence: bool = True) -> dict[int, Compliance]:
    """SOP 13.2 status of each deployment, computed in a fixed number of queries.

    Each item is "done" when the portal holds evidence for it: the data it records
    itself (gates and approvals, reported CI checks, the backup and health-check
    steps, the post-implementation review) or the item ticked on the change's
    compliance checklist, with who ticked it. What the portal cannot know and nobody
    ticked is "not_recorded"; a control that failed is "missing".

    ``changes`` (by id) saves reading them again; ``evidence=False`` judges without
    writing who approved when (a list shows the count of items done only).
    """
    deployments = list(deployments)
    facts = _compliance_facts(deployments, changes)
    result = {}
    for d in deployments:
        change = facts.changes.get(d.change_id)
        judged = [
            ("change_approval", _change_approval_item(d, change, facts, evidence)),
            ("security_review", _security_review_item(d, facts)),
            ("backup", _step_item(d, "backup", "backup step", facts)),
            ("monitoring", _step_item(d, "health_check", "post-deployment health check",
                                      facts)),
            ("rollback_tested", _rollback_tested_item(d, change, facts)),
            # Stakeholder notification sent: from the change's checklist tick only.
            ("stakeholders", (NOT_RECORDED,
                              "not ticked on the change's compliance checklist")),
            ("post_review", _post_review_item(change, facts)),
        ]
        ticks = facts.ticked.get(d.change_id, {})
        result[d.pk] = Compliance([_with_tick(key, text, verdict, ticks)
                                   for (key, verdict), (_, text) in zip(judged, SOP_13_2,
                                                                        strict=True)])
    return result


# ---------------------------------------------------------------------------
# Evidence behind one deployment


def evidence_events(deployment, change) -> list[dict]:
    """Every audit event about the deployment, its change and its release, oldest first,
    each re-hashed so the page can say whether it is intact."""
    q = Q(object_type="deployment", object_id=str(deployment.pk)) | Q(
        object_type="release", object_id=str(deployment.release_id))
    if change is not None:
        q |= Q(object_type="changerequest", object_id=str(change.pk))
    events = list(AuditEvent.objects.filter(q).order_by("id"))
    return [{"event": e, "intact": compute_hash(e) == e.hash} for e in events]


def evidence(deployment) -> dict:
    change = changes_by_id([deployment.change_id]).get(deployment.change_id)
    gates = list(Gate.objects.filter(change=change).prefetch_related("approvals__approver")
                 ) if change else []
    decisions = list(Approval.objects.filter(change=change).select_related("approver", "gate")
                     .order_by("decided_at", "id")) if change else []
    checklist = (list(ChecklistItem.objects.filter(change=change).select_related("done_by"))
                 if change is not None else [])
    return {
        "deployment": deployment,
        "change": change,
        "gates": gates,
        "decisions": decisions,
        "checklist": checklist,
        "steps": list(deployment.steps.order_by("position")),
        "log": list(deployment.log_lines.order_by("seq")[:2000]),
        "log_count": deployment.log_lines.count(),
        "events": evidence_events(deployment, change),
        "compliance": compliance_for([deployment])[deployment.pk],
    }
