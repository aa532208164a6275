"""Deadlines of a change (docs/cab.md): its gates' approve-by time and, once
approved, its start-by time; what happens when either passes, and the warning before.

- Approve-by (``Gate.expires_at``): set from the policy's ``approve_within_hours`` when
  the change is submitted (and when a lapse reopens its gates). A gate still pending
  then expires: the change goes back to draft with its pending gates closed
  (``expired``), audited (``gate.expired``), and the requester is told, to resubmit.
- Start-by (``ChangeRequest.execute_by``): set from ``execute_within_days`` when the
  change becomes approved. A change not started by then loses its approvals: each is
  withdrawn, the gates reopen and the change waits for approval again, audited
  (``change.approvals_lapsed``); the requester and the approvers are told.
- One warning before each deadline, recorded on the row so it goes once.

Every transition takes the change's row lock, as decisions do: a decision or a deploy
press landing at the same moment either commits first (and nothing expires) or sees the
expiry and is refused (``gate_expired``, ``approval_lapsed``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction

from approvals import signals
from approvals.models import Approval, ApprovalPolicy, ChangeRequest, Gate
from approvals.services.reopening import _reopen
from audit.trail import System, audit_record
from core import clock
from core.errors import Conflict, NotReady

logger = logging.getLogger(__name__)

# The warning before the start-by time.
EXECUTE_WARNING = timedelta(hours=24)
# The warning before the approve-by time: 24 hours before, or halfway through a shorter
# window; a window of 2 hours or less has none (the approval request is the reminder).
EXPIRY_WARNING = timedelta(hours=24)
EXPIRY_WARNING_MIN_WINDOW = timedelta(hours=2)

WAITING_TO_START = (ChangeRequest.Status.APPROVED, ChangeRequest.Status.SCHEDULED)


def _policy_of(change: ChangeRequest) -> ApprovalPolicy | None:
    return ApprovalPolicy.objects.filter(environment_id=change.environment_id,
                                         change_type=change.change_type).first()


def expiry_warning_lead(window_hours: int | None) -> timedelta | None:
    """How long before the approve-by time its warning goes (None: no warning)."""
    if not window_hours:
        return None
    window = timedelta(hours=window_hours)
    if window <= EXPIRY_WARNING_MIN_WINDOW:
        return None
    return min(EXPIRY_WARNING, window / 2)


def _approve_by(change: ChangeRequest, policy: ApprovalPolicy | None) -> datetime | None:
    if policy is None or not policy.approve_within_hours:
        return None
    return clock.now() + timedelta(hours=policy.approve_within_hours)


def _set_approve_by(change: ChangeRequest, gates: list[Gate]) -> datetime | None:
    """The approve-by time of ``gates`` just opened (saved by the caller or here)."""
    expires = _approve_by(change, _policy_of(change))
    for gate in gates:
        gate.expires_at = expires
        gate.expiry_warned_at = None
    return expires


def _set_execute_by(change: ChangeRequest) -> None:
    """The change just became approved: it must start within the policy's days. A change
    scheduled later counts them from its scheduled time, so the approval it was given
    for that time does not lapse before it comes. Saved by the caller."""
    policy = _policy_of(change)
    if policy is None or not policy.execute_within_days:
        change.execute_by = None
    else:
        start = max(clock.now(), change.scheduled_for or clock.now())
        change.execute_by = start + timedelta(days=policy.execute_within_days)
    change.execute_warned_at = None


def _check_gate_not_expired(change: ChangeRequest, gate: Gate) -> None:
    """Refuses a decision on a gate whose approve-by time has passed (under the change's
    row lock), whether or not the beat has expired it yet."""
    if gate.status == Gate.Status.EXPIRED or (
            gate.status == Gate.Status.PENDING and gate.expires_at is not None
            and gate.expires_at <= clock.now()):
        raise Conflict(
            f"the {gate.get_role_display()} gate of {change.reference} was to be decided by "
            f"{gate.expires_at:%Y-%m-%d %H:%M} UTC; the requester resubmits the change",
            code="gate_expired")


def _check_not_lapsed(change: ChangeRequest) -> None:
    """Refuses a start after the start-by time: the approvals no longer count."""
    if change.execute_by is not None and change.execute_by <= clock.now():
        detail = (f"{change.reference} was to start by {change.execute_by:%Y-%m-%d %H:%M} "
                  "UTC; its approvals lapsed and are needed again")
        raise NotReady(detail, code="approval_lapsed",
                       blockers=[{"code": "approval_lapsed", "message": detail}])


def _locked_waiting_for_approval(change_id: int) -> ChangeRequest | None:
    """The change under its row lock, if it still waits for approval (else None)."""
    return (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
            .filter(pk=change_id, status=ChangeRequest.Status.PENDING_APPROVAL).first())


def change_gates_expire(*, change_id: int) -> bool:
    """The approve-by time of a pending gate passed: close the pending gates, the change
    back to draft, audited and told. False when there is nothing (any more) to expire."""
    with transaction.atomic():
        change = _locked_waiting_for_approval(change_id)
        if change is None:
            return False
        now = clock.now()
        pending = list(change.gates.filter(status=Gate.Status.PENDING))
        due = [g for g in pending if g.expires_at is not None and g.expires_at <= now]
        if not due:
            return False
        deadline = min(g.expires_at for g in due)
        system = System(f"{change.reference} not approved by {deadline:%Y-%m-%d %H:%M} UTC")
        for gate in pending:
            gate.status = Gate.Status.EXPIRED
            gate.save(update_fields=["status"])
        change.status = ChangeRequest.Status.DRAFT
        change.save(update_fields=["status"])
        roles = [g.role for g in pending]
        audit_record(actor=system, action="gate.expired", obj=change,
                     environment=change.environment.slug,
                     before={"status": ChangeRequest.Status.PENDING_APPROVAL,
                             "gates": {g.role: Gate.Status.PENDING for g in pending}},
                     after={"status": change.status, "expired": roles,
                            "expires_at": deadline},
                     reason=f"not decided by {deadline:%Y-%m-%d %H:%M} UTC; back to draft "
                            "for the requester to resubmit")
        signals.send_in_transaction(signals.change_gates_expired, change_id=change.pk,
                                    roles=roles, expires_at=deadline, at=now)
        return True


def change_approvals_lapse(*, change_id: int) -> bool:
    """The start-by time of an approved change passed before it started deploying:
    withdraw every approval, reopen the gates, the change back to pending approval,
    audited and told. False when there is nothing (any more) to lapse."""
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .filter(pk=change_id, status__in=WAITING_TO_START,
                          execute_by__lte=clock.now()).first())
        if change is None:
            return False
        now = clock.now()
        deadline = change.execute_by
        before = change.status
        reason = f"approval lapsed: not started by {deadline:%Y-%m-%d %H:%M} UTC"
        approvals = list(change.approvals.filter(withdrawn_at__isnull=True,
                                                 decision=Approval.Decision.APPROVED)
                         .select_related("gate", "approver"))
        for approval in approvals:
            _reopen(change, approval, reason)
        gates = list(change.gates.all())
        for gate in gates:
            if gate.status != Gate.Status.PENDING:
                gate.status = Gate.Status.PENDING
        # The reopened gates get a fresh approve-by from the policy.
        _set_approve_by(change, gates)
        Gate.objects.bulk_update(gates, ["status", "expires_at", "expiry_warned_at"])
        change.status = ChangeRequest.Status.PENDING_APPROVAL
        change.save(update_fields=["status"])
        approvers = sorted({a.approver_id for a in approvals})
        audit_record(actor=System(f"{change.reference} not started by "
                                  f"{deadline:%Y-%m-%d %H:%M} UTC"),
                     action="change.approvals_lapsed", obj=change,
                     environment=change.environment.slug, before={"status": before},
                     after={"status": change.status, "execute_by": deadline,
                            "withdrawn": [{"role": a.gate.role,
                                           "approver": a.approver.get_username()}
                                          for a in approvals]},
                     reason=reason)
        signals.send_in_transaction(signals.change_approvals_lapsed, change_id=change.pk,
                                    execute_by=deadline, approver_ids=approvers, at=now)
        return True


def _warn_expiry(*, change_id: int) -> bool:
    with transaction.atomic():
        change = _locked_waiting_for_approval(change_id)
        if change is None:
            return False
        now = clock.now()
        policy = _policy_of(change)
        lead = expiry_warning_lead(policy.approve_within_hours if policy else None)
        gates = [g for g in change.gates.filter(status=Gate.Status.PENDING,
                                                expiry_warned_at__isnull=True,
                                                expires_at__gt=now)
                 if lead is not None and g.expires_at - lead <= now]
        if not gates:
            return False
        for gate in gates:
            gate.expiry_warned_at = now
        Gate.objects.bulk_update(gates, ["expiry_warned_at"])
        deadline = min(g.expires_at for g in gates)
        audit_record(actor=System(f"{change.reference} to be approved by "
                                  f"{deadline:%Y-%m-%d %H:%M} UTC"),
                     action="change.deadline_warned", obj=change,
                     environment=change.environment.slug,
                     after={"deadline": "approve_by", "at": deadline,
                            "roles": [g.role for g in gates]})
        signals.send_in_transaction(signals.change_deadline_near, change_id=change.pk,
                                    deadline="approve_by", due=deadline,
                                    roles=[g.role for g in gates], at=now)
        return True


def _warn_execute(*, change_id: int) -> bool:
    with transaction.atomic():
        now = clock.now()
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .filter(pk=change_id, status__in=WAITING_TO_START,
                          execute_warned_at__isnull=True, execute_by__gt=now,
                          execute_by__lte=now + EXECUTE_WARNING).first())
        if change is None:
            return False
        change.execute_warned_at = now
        change.save(update_fields=["execute_warned_at"])
        audit_record(actor=System(f"{change.reference} to start by "
                                  f"{change.execute_by:%Y-%m-%d %H:%M} UTC"),
                     action="change.deadline_warned", obj=change,
                     environment=change.environment.slug,
                     after={"deadline": "start_by", "at": change.execute_by})
        signals.send_in_transaction(signals.change_deadline_near, change_id=change.pk,
                                    deadline="start_by", due=change.execute_by, roles=[],
                                    at=now)
        return True


def deadlines_enforce() -> dict[str, list[int]]:
    """Beat: expire the gates, lapse the approvals and send the warnings that are due.
    Each change in its own transaction under its row lock (the services above), so one
    that fails does not hold up the others and two beats at once act once."""
    now = clock.now()
    due = {
        "expired": (change_gates_expire, Gate.objects.filter(
            status=Gate.Status.PENDING, expires_at__lte=now,
            change__status=ChangeRequest.Status.PENDING_APPROVAL).values_list(
            "change_id", flat=True)),
        "lapsed": (change_approvals_lapse, ChangeRequest.objects.filter(
            status__in=WAITING_TO_START, execute_by__lte=now).values_list("pk", flat=True)),
        "warned_approve_by": (_warn_expiry, Gate.objects.filter(
            status=Gate.Status.PENDING, expiry_warned_at__isnull=True, expires_at__gt=now,
            expires_at__lte=now + EXPIRY_WARNING,
            change__status=ChangeRequest.Status.PENDING_APPROVAL).values_list(
            "change_id", flat=True)),
        "warned_start_by": (_warn_execute, ChangeRequest.objects.filter(
            status__in=WAITING_TO_START, execute_warned_at__isnull=True, execute_by__gt=now,
            execute_by__lte=now + EXECUTE_WARNING).values_list("pk", flat=True)),
    }
    done: dict[str, list[int]] = {}
    for name, (act, ids) in due.items():
        done[name] = []
        for change_id in sorted(set(ids)):
            try:
                if act(change_id=change_id):
                    done[name].append(change_id)
            except Exception:
                logger.exception("deadline %s of change %s not enforced", name, change_id)
    return done
