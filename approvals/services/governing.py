"""The policy version every decision is taken under (docs/policies.md): the active
document, the facts of a decision as the evaluator reads them, and what a decision's
audit event records of them (``policy_digest``, ``policy_version``, ``policy_facts``),
so an auditor can re-check it later against the version then in force.

A portal with no active version (a fresh database before `seed_demo` or a first
`policy import`) decides from the policy rows alone, and its events carry no digest.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from approvals.models import ChangeRequest, PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import evaluate
from approvals.services.policy_shadow import shadow_compare
from audit.trail import System, audit_record
from core import clock

# The evaluator's blockers a start takes from the document itself; the others (windows,
# freezes, promotion, conflicts, who may deploy) come from the compiled rows, which the
# blockers already read (approvals.selectors.change_blockers).
START_CODES = frozenset({"start_restricted", "policy_error"})


def active_version() -> PolicyVersion | None:
    """The version in force now; an approved version whose time has come is made active
    first (the beat does so too, this makes it exact at read time)."""
    due = (PolicyVersion.objects.filter(status=PolicyVersion.Status.APPROVED,
                                        effective_at__lte=clock.now())
           .order_by("effective_at", "number").values_list("pk", flat=True).first())
    if due is not None:
        _activate(due)
    return PolicyVersion.objects.filter(status=PolicyVersion.Status.ACTIVE).first()


def _activate(pk: int) -> PolicyVersion | None:
    """Make approved version ``pk`` active, compiling it into the policy rows; the one
    it replaces is superseded. Audited as `policy.activated`."""
    from approvals.policy.rows import compile_rows

    with transaction.atomic():
        # Two requests reading at the due time: the row lock lets one activate it.
        version = PolicyVersion.objects.select_for_update().filter(
            pk=pk, status=PolicyVersion.Status.APPROVED).first()
        if version is None:
            return None
        document = policy_document.parse(version.document)
        previous = (PolicyVersion.objects.select_for_update()
                    .filter(status=PolicyVersion.Status.ACTIVE).first())
        now = clock.now()
        if previous:
            previous.status = PolicyVersion.Status.SUPERSEDED
            previous.closed_at = now
            previous.save(update_fields=["status", "closed_at"])
        written = compile_rows(document)
        version.status = PolicyVersion.Status.ACTIVE
        version.activated_at = now
        version.save(update_fields=["status", "activated_at"])
        audit_record(actor=System(f"policy v{version.number} due at "
                                  f"{version.effective_at:%Y-%m-%d %H:%M} UTC"),
                     action="policy.activated", obj=version, object_type="policyversion",
                     object_repr=str(version),
                     before={"version": previous.number if previous else None,
                             "policy_digest": previous.digest if previous else None},
                     after={"version": version.number, "policy_digest": version.digest,
                            "compiled": written})
    return version


def active_document() -> tuple[PolicyVersion | None, policy_document.Document | None]:
    version = active_version()
    if version is None:
        return None, None
    return version, policy_document.parse(version.document)


def change_facts(change: ChangeRequest, *, at: datetime, action: str = "submit",
                 risk_score: int | None = None, actor=None) -> dict:
    """The facts of a decision on ``change`` (shape: ``approvals.policy.evaluate``)."""
    facts = {
        "at": at.isoformat(),
        "action": action,
        "change": {
            "id": change.pk,
            "environment": change.environment.slug,
            "change_type": change.change_type,
            "applications": [change.release.application.slug],
            "risk_score": risk_score,
            "risk": change.risk or "",
            "requester": change.requested_by.get_username() if change.requested_by_id else "",
            "on_call": bool(change.on_call_id),
            "rollback_plan": bool((change.rollback_plan or "").strip()),
        },
    }
    if actor is not None:
        facts["actor"] = {"username": actor.get_username(),
                          "groups": sorted(actor.groups.values_list("name", flat=True))}
    return facts


def record(version: PolicyVersion | None, facts: dict | None = None) -> dict:
    """What an audit event keeps of the policy a decision was taken under."""
    if version is None:
        return {}
    kept = {"policy_digest": version.digest, "policy_version": version.number}
    if facts is not None:
        kept["policy_facts"] = facts
    return kept


def decide(change: ChangeRequest, *, action: str, risk_score: int | None = None,
           actor=None) -> tuple[PolicyVersion | None, dict | None, dict | None]:
    """(version, facts, outcome) of the active policy for a decision on ``change`` now;
    (None, None, None) with no active version."""
    version, document = active_document()
    if version is None:
        return None, None, None
    facts = change_facts(change, at=clock.now(), action=action, risk_score=risk_score,
                         actor=actor)
    outcome = evaluate(document, facts)
    # Evaluate mode: proposed versions run beside it, recorded, never binding.
    shadow_compare(change=change, facts=facts, outcome=outcome, active=version)
    return version, facts, outcome


def rule_gates(version: PolicyVersion, outcome: dict) -> dict[str, int]:
    """The gates the rules that held add, {role: count} (the highest count per role)."""
    document = policy_document.parse(version.document)
    held = set(outcome["rules"])
    gates: dict[str, int] = {}
    for rule, _ in document.rules:
        if rule["name"] in held:
            for role, count in rule["gates"].items():
                gates[role] = max(gates.get(role, 0), count)
    return gates
