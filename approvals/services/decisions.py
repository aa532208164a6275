"""Decisions on a change's gates: approve, reject, withdraw an approval; who may decide
(``may_decide``) and what a decision does to its gate and the change.
"""

from __future__ import annotations

from django.db import transaction

from approvals import eligibility, signals
from approvals.models import Approval, ChangeRequest, Gate
from approvals.selectors import person_facts
from approvals.services import governing
from approvals.services.changes import _approved_status
from approvals.services.deadlines import _check_gate_not_expired, _set_execute_by
from approvals.services.fingerprints import fingerprint, version_of
from approvals.services.guards import _refusal_audited, _refuse, _step_up_for_production
from approvals.services.reopening import _reopen
from approvals.services.risk import risk_assess
from approvals.services.scheduling import _hold_environment_if_it_may_start, _start_by_itself
from audit.trail import audit_record
from catalog.models import Environment
from core import clock
from core.errors import (
    AlreadyDecided,
    ChangedSinceViewed,
    Conflict,
    Invalid,
    InvalidTransition,
    Refused,
)
from identity import assurance


def may_decide(user, environment: Environment, role: str):
    """(allowed, lent): whether ``user`` holds the authority over ``role`` there, by the
    permission (lent is None) or by a live delegation from someone who still holds it
    (the oldest such delegation), before any change's own rules
    (``approvals.eligibility``)."""
    direct, lent = eligibility.authority(person_facts(user), environment.pk, role,
                                         clock.now())
    if direct:
        return True, None
    return (True, lent[0]) if lent else (False, None)


def _decide(*, actor, change: ChangeRequest, role: str, decision: str, comment: str,
            seen: str | None) -> Gate:
    action = f"gate.{decision}"
    try:
        with transaction.atomic():
            # The change row lock serialises every decision on this change:
            # approve racing reject, or two approvers at once, settle here.
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .get(pk=change.pk))
            _hold_environment_if_it_may_start(change)
            gate = _gate_open_to_decisions(change, role)
            lent = _decider_standing(actor, change, gate)
            factor = _step_up_for_production(
                actor, change.environment,
                f"{'approve' if decision == Approval.Decision.APPROVED else 'reject'} a "
                f"{change.environment.name} gate")
            parts = fingerprint(change)
            current = version_of(change, parts)
            _check_decision_is_new(change, seen=seen, current=current)
            Approval.objects.create(gate=gate, change=change, approver=actor,
                                    decision=decision, comment=comment,
                                    fingerprint=parts,
                                    on_behalf_of_id=lent.delegator_id if lent else None)
            before = _apply_decision(change, gate, decision)
            risk_assess(change=change, trigger="decision", actor=actor)
            audit_record(actor=actor, action=action, obj=change,
                         object_repr=f"{change} / {gate.get_role_display()}",
                         environment=change.environment.slug, before=before,
                         after={"gate": gate.status, "change": change.status, "role": role,
                                "comment": comment,
                                "on_behalf_of": lent.delegator if lent else None,
                                # The version decided on; None: an API client sent none.
                                "version": current, "version_seen": seen, **factor,
                                **governing.record(governing.active_version())})
            _announce_decision(change, gate, actor, comment)
            if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
                _start_by_itself(change=change, why=f"the last approval of {change.reference}"
                                                    f" ({role}, by {actor.get_username()})")
            return gate
    except (Refused, ChangedSinceViewed) as exc:
        _refusal_audited(f"{action}.refused", actor, change, exc, role=role,
                         version_seen=seen, **governing.record(governing.active_version()))
        raise
    except Conflict as exc:
        # Past the approve-by time (docs/cab.md): on the record, like a refusal.
        if exc.code == "gate_expired":
            _refusal_audited(f"{action}.refused", actor, change, exc, role=role)
        raise


def _gate_open_to_decisions(change: ChangeRequest, role: str) -> Gate:
    """The change's ``role`` gate, while the change still takes decisions."""
    if change.status == ChangeRequest.Status.DRAFT:
        # Back in draft because its gates expired: say so rather than "draft".
        expired = change.gates.filter(role=role, status=Gate.Status.EXPIRED).first()
        if expired is not None:
            _check_gate_not_expired(change, expired)
    if change.status != ChangeRequest.Status.PENDING_APPROVAL:
        raise AlreadyDecided(
            f"{change.reference} is {change.get_status_display().lower()}; "
            "it takes no more decisions")
    gate = change.gates.filter(role=role).first()
    if gate is None:
        # A well-formed gate this change does not have: a missing object, not bad input.
        raise Invalid(f"{change.reference} has no {role} gate", code="no_such_object",
                      fields={"gate": [f"This change has no {role!r} gate."]})
    _check_gate_not_expired(change, gate)
    return gate


def _decider_standing(actor, change: ChangeRequest, gate: Gate):
    """Refuses a decider ``approvals.eligibility`` finds not eligible (segregation of
    duties, authority, one gate per person, the gate still waiting), under the change's
    row lock; returns the delegation ``actor`` decides through (None when they hold the
    permission themselves)."""
    gates = list(change.gates.prefetch_related("approvals"))
    gate = next(g for g in gates if g.pk == gate.pk)
    verdict = eligibility.gate_verdict(
        person=person_facts(actor), change=change, gate=gate,
        decided_by=eligibility.decided(gates), at=clock.now())
    _refuse(verdict)
    return verdict.on_behalf_of


def _check_decision_is_new(change: ChangeRequest, *, seen: str | None, current: str) -> None:
    """Refuses a decision on an older version of the change than the current one."""
    if seen is not None and seen != current:
        raise ChangedSinceViewed(
            f"{change.reference} changed since you opened it; reload it, review what "
            "changed and decide again")


def _apply_decision(change: ChangeRequest, gate: Gate, decision: str) -> dict:
    """The gate and change after a decision (the Approval row already counted); returns
    their statuses before it."""
    before = {"gate": gate.status, "change": change.status}
    if decision == Approval.Decision.REJECTED:
        gate.status = Gate.Status.REJECTED
        change.status = ChangeRequest.Status.REJECTED
        change.closed_at = clock.now()
    else:
        count = gate.approvals.filter(decision=Approval.Decision.APPROVED,
                                      withdrawn_at__isnull=True).count()
        if count >= gate.required:
            gate.status = Gate.Status.APPROVED
    gate.save(update_fields=["status"])
    if (decision == Approval.Decision.APPROVED
            and not change.gates.exclude(status=Gate.Status.APPROVED).exists()):
        change.status = _approved_status(change)
        _set_execute_by(change)
    change.save(update_fields=["status", "closed_at", "execute_by", "execute_warned_at"])
    return before


def _announce_decision(change: ChangeRequest, gate: Gate, actor, comment: str) -> None:
    """Tell listeners about a decision once it has committed."""
    if gate.status == Gate.Status.REJECTED:
        signals.send_in_transaction(signals.gate_rejected, change_id=change.pk, role=gate.role,
                                  rejected_by=actor.get_username(), comment=comment,
                                  at=clock.now())
    else:
        signals.send_in_transaction(signals.gate_approved, change_id=change.pk, role=gate.role,
                                  change_status=change.status, at=clock.now())


@assurance.refusals_audited
def gate_approve(*, actor, change: ChangeRequest, role: str, comment: str = "",
                 seen: str | None = None) -> Gate:
    """Approve one gate. ``seen`` is the change version the approver was shown
    (``change_version``); a decision on an older version is refused. Pages always send
    it; API clients may leave it out (``None``), see docs/api.md."""
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.APPROVED, comment=comment.strip(), seen=seen)


@assurance.refusals_audited
def gate_reject(*, actor, change: ChangeRequest, role: str, comment: str,
                seen: str | None = None) -> Gate:
    if not comment or not comment.strip():
        raise Invalid("a rejection needs a comment saying why",
                      fields={"comment": ["Say why the change is rejected."]})
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.REJECTED, comment=comment.strip(), seen=seen)


def approval_withdraw(*, actor, change: ChangeRequest, role: str, reason: str = "") -> Gate:
    """An approver takes their approval back; allowed until the deployment starts."""
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.status not in (ChangeRequest.Status.PENDING_APPROVAL,
                                 ChangeRequest.Status.APPROVED,
                                 ChangeRequest.Status.SCHEDULED):
            raise InvalidTransition(
                f"{change.reference} is {change.get_status_display().lower()}; approvals can "
                "be withdrawn only until the deployment starts", code="too_late")
        approval = (change.approvals.select_related("gate")
                    .filter(approver=actor, gate__role=role, withdrawn_at__isnull=True,
                            decision=Approval.Decision.APPROVED).first())
        if approval is None:
            raise InvalidTransition(f"you have no approval on the {role} gate to withdraw",
                                    code="nothing_to_withdraw")
        before = {"gate": approval.gate.status, "change": change.status}
        _reopen(change, approval, reason or "withdrawn by the approver")
        audit_record(actor=actor, action="approval.withdrawn", obj=change,
                     environment=change.environment.slug, before=before,
                     after={"gate": approval.gate.status, "change": change.status,
                            "role": role}, reason=reason)
        return approval.gate
