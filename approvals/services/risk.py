"""The risk score of a change, kept and audited (docs/cab.md): assessed at
submission, at each gate decision and at each edit of a submitted change; a policy's
risk threshold adds its extra gate at submission.
"""

from __future__ import annotations

from django.db import transaction

from approvals import risk
from approvals.models import ApprovalPolicy, ChangeRequest, Gate, GateRole, RiskAssessment
from approvals.risk_selectors import risk_facts
from audit.trail import audit_record
from core import clock


def risk_assess(*, change: ChangeRequest, trigger: str, actor) -> RiskAssessment:
    """Score ``change`` now (``approvals.risk``), keep the assessment and audit it
    (``change.risk_assessed``). Called inside the submitting, deciding or editing
    transaction, so the assessment stands or falls with it."""
    if trigger not in RiskAssessment.Trigger.values:
        raise ValueError(f"unknown risk trigger {trigger!r}")
    now = clock.now()
    with transaction.atomic():
        facts = risk_facts([change], at=now)[change.pk]
        result = risk.assess(change, facts=facts)
        assessment = RiskAssessment.objects.create(
            change=change, score=result.score, factors=result.factors, trigger=trigger,
            created_at=now)
        audit_record(actor=actor, action="change.risk_assessed", obj=change,
                     environment=change.environment.slug,
                     after={"score": result.score, "band": result.band, "trigger": trigger,
                            "factors": result.factors})
    return assessment


def _add_risk_gate(*, actor, change: ChangeRequest, policy: ApprovalPolicy | None,
                   assessment: RiskAssessment) -> Gate | None:
    """At submission: the policy's extra gate when the score reaches its threshold and
    the change has not got that gate yet; audited, and kept on the assessment so the
    change page says why."""
    if (policy is None or policy.risk_threshold is None or not policy.risk_extra_gate
            or assessment.score < policy.risk_threshold):
        return None
    role = policy.risk_extra_gate
    if change.gates.filter(role=role).exists():
        return None
    gate = Gate.objects.create(change=change, role=role, required=1)
    assessment.threshold = policy.risk_threshold
    assessment.added_gate = role
    assessment.save(update_fields=["threshold", "added_gate"])
    label = GateRole(role).label
    audit_record(actor=actor, action="change.risk_gate_added", obj=change,
                 environment=change.environment.slug,
                 after={"role": role, "score": assessment.score,
                        "threshold": policy.risk_threshold},
                 reason=f"risk {assessment.score} ≥ {policy.risk_threshold}: "
                        f"{label} gate added")
    return gate
