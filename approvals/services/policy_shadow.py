"""Evaluate mode (docs/policies.md, backtest): every proposed policy version runs beside
the active one on each live decision (submission, start) and where it would have
decided otherwise a ``PolicyShadowDifference`` is kept, audited as
``policy.shadow_differed``. It never binds: the live decision takes the active
version's outcome, and a proposed document that fails to evaluate is recorded with its
error, never raised.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction

from approvals.models import ChangeRequest, PolicyShadowDifference, PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import evaluate
from audit.trail import System, audit_record
from core import clock

logger = logging.getLogger(__name__)
ACTIONS = {"submit", "start"}


def summary(outcome: dict) -> dict:
    """What a decision takes from an outcome: the gates a submission sets, what would
    stop a start."""
    return {"gates": outcome["gates"], "rules": outcome["rules"],
            "blockers": sorted({b["code"] for b in outcome["blockers"]}),
            "start_allowed": outcome["start"]["allowed"]}


def differs(action: str, active: dict, proposed: dict) -> bool:
    if action == "submit":
        return active["gates"] != proposed["gates"]
    return (active["blockers"] != proposed["blockers"]
            or active["start_allowed"] != proposed["start_allowed"])


def shadow_compare(*, change: ChangeRequest, facts: dict, outcome: dict,
                   active: PolicyVersion) -> list[PolicyShadowDifference]:
    """Evaluate each proposed version over the facts the live decision was taken on;
    keep and audit where it differs. Inside the decision's transaction, in a savepoint:
    nothing here can fail the decision."""
    action = facts.get("action") or "submit"
    if action not in ACTIONS:
        return []
    kept = []
    try:
        with transaction.atomic():
            proposed_versions = list(PolicyVersion.objects.filter(
                status=PolicyVersion.Status.PROPOSED).order_by("number"))
            mine = summary(outcome)
            for version in proposed_versions:
                error, theirs = "", {}
                try:
                    result = evaluate(policy_document.parse(version.document), facts)
                    theirs = summary(result)
                    # A condition that failed to evaluate: the evaluator reports it.
                    error = "; ".join(b["reason"] for b in result["blockers"]
                                      if b["code"] == "policy_error")[:500]
                except Exception as exc:  # noqa: BLE001 - a proposal must not stop a decision
                    error = f"{type(exc).__name__}: {exc}"[:500]
                if not error and not differs(action, mine, theirs):
                    continue
                row = PolicyShadowDifference.objects.create(
                    version=version, change=change, action=action,
                    active_digest=active.digest, active=mine, proposed=theirs,
                    error=error, at=clock.now())
                audit_record(actor=System(f"evaluate mode: policy v{version.number} beside "
                                          f"v{active.number}"),
                             action="policy.shadow_differed", obj=version,
                             object_type="policyversion", object_repr=str(version),
                             environment=change.environment.slug,
                             after={"change": change.pk, "decision": action,
                                    "policy_digest": version.digest,
                                    "active_policy_digest": active.digest,
                                    "active": mine, "proposed": theirs, "error": error})
                kept.append(row)
    except DatabaseError:
        logger.exception("evaluate mode: could not record a difference for %s",
                         change.reference)
        return []
    return kept
