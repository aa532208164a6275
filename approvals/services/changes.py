"""A change request from its draft to its end by the requester's hand: create,
submit (its gates and readiness checklist opened), edit, cancel.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from approvals import signals
from approvals.models import (
    PRE_DEPLOYMENT_KINDS,
    ApprovalPolicy,
    ChangeRequest,
    ChangeType,
    Gate,
    Strategy,
)
from approvals.selectors import unsatisfiable_gates
from approvals.services import governing
from approvals.services.checklists import _open_checklist
from approvals.services.deadlines import _set_approve_by, _set_execute_by
from approvals.services.guards import _refusal_audited, _require_deploy_for_self_start
from approvals.services.reopening import _reopen_changed_concerns
from approvals.services.risk import _add_risk_gate, risk_assess
from approvals.services.scheduling import _hold_environment_if_it_may_start, _start_by_itself
from audit.trail import audit_record
from catalog.models import Environment, Release
from catalog.permissions import has_env_perm
from core import clock
from core.errors import Invalid, InvalidTransition, Refused
from identity import assurance

EDITABLE_FIELDS = ("strategy", "rollback_plan", "risk", "impact", "on_call", "scheduled_for")


def _snapshot(change: ChangeRequest) -> dict:
    return {
        "status": change.status,
        "release": change.release.version,
        "environment": change.environment.slug,
        "change_type": change.change_type,
        "strategy": change.strategy,
        "rollback_plan": change.rollback_plan,
        "on_call": change.on_call.get_username() if change.on_call_id else None,
        "scheduled_for": change.scheduled_for,
        "deployer": change.deployer.get_username() if change.deployer_id else None,
    }


def _policy(change: ChangeRequest) -> ApprovalPolicy | None:
    return (ApprovalPolicy.objects.filter(environment_id=change.environment_id,
                                          change_type=change.change_type)
            .prefetch_related("gates").first())


@assurance.refusals_audited
def change_request_create(
    *,
    actor,
    release: Release,
    environment: Environment,
    change_type: str = ChangeType.STANDARD,
    strategy: str = Strategy.ALL_AT_ONCE,
    rollback_plan: str = "",
    risk: str = "",
    impact: str = "",
    on_call=None,
    scheduled_for: datetime | None = None,
    deploy_when_approved: bool = False,
    draft: bool = False,
) -> ChangeRequest:
    if change_type not in ChangeType.values:
        raise Invalid("unknown change type", fields={"change_type": [
            f"Choose one of {', '.join(ChangeType.values)}."]})
    if strategy not in Strategy.values:
        raise Invalid("unknown strategy", fields={"strategy": [
            f"Choose one of {', '.join(Strategy.values)}."]})
    # SOP 5.3: an emergency change always carries its rollback plan.
    if change_type == ChangeType.EMERGENCY and not rollback_plan.strip():
        raise Invalid("an emergency change needs a rollback plan", fields={
            "rollback_plan": ["An emergency change needs a rollback plan (SOP 5.3)."]})
    if scheduled_for is not None and scheduled_for <= clock.now():
        raise Invalid("the schedule is in the past", fields={
            "scheduled_for": ["Choose a time in the future."]})
    if not has_env_perm(actor, "request_change", environment):
        raise Refused(f"you may not request changes to {environment.name}",
                      code="not_permitted")
    try:
        factor = _require_deploy_for_self_start(actor, environment,
                                                deploy_when_approved=deploy_when_approved,
                                                scheduled_for=scheduled_for)
    except Refused as exc:
        with transaction.atomic():
            audit_record(actor=actor, action="change.create.refused",
                         object_type="changerequest", object_repr=f"{release} to "
                         f"{environment.slug}", environment=environment.slug,
                         after={"code": exc.code, "release": release.version,
                                "deploy_when_approved": deploy_when_approved,
                                "scheduled_for": scheduled_for}, reason=exc.detail)
        raise
    with transaction.atomic():
        change = ChangeRequest.objects.create(
            release=release, environment=environment, change_type=change_type,
            strategy=strategy, rollback_plan=rollback_plan, risk=risk, impact=impact,
            on_call=on_call, scheduled_for=scheduled_for,
            deploy_when_approved=deploy_when_approved, requested_by=actor,
            deployer=actor if (deploy_when_approved or scheduled_for) else None,
        )
        audit_record(actor=actor, action="change.created", obj=change,
                     environment=environment.slug, after={**_snapshot(change), **factor})
        if not draft:
            _submit(actor=actor, change=change)
    return change


def change_request_submit(*, actor, change: ChangeRequest) -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.requested_by_id != actor.pk:
            raise Refused("only the requester submits a draft", code="not_requester")
        _submit(actor=actor, change=change)
    return change


def _submit(*, actor, change: ChangeRequest) -> None:
    """Draft -> pending approval, with one gate per required role of the policy."""
    if change.status != ChangeRequest.Status.DRAFT:
        raise InvalidTransition(f"{change.reference} is {change.get_status_display().lower()}, "
                                "not a draft")
    _hold_environment_if_it_may_start(change)
    policy = _policy(change)
    # A change resubmitted after its gates expired (approvals.services.deadlines) keeps
    # its gates: the approved ones stand, the others (expired, or reopened by an edit in
    # draft) open again with a new approve-by time.
    existing = {g.role: g for g in change.gates.all()}
    gates = [Gate(change=change, role=pg.role, required=pg.required)
             for pg in (policy.gates.all() if policy else []) if pg.role not in existing]
    reopened = [g for g in existing.values() if g.status != Gate.Status.APPROVED]
    for gate in reopened:
        gate.status = Gate.Status.PENDING
    _set_approve_by(change, gates + reopened)
    Gate.objects.bulk_create(gates)
    Gate.objects.bulk_update(reopened, ["status", "expires_at", "expiry_warned_at"])
    if not existing:
        _open_checklist(change, PRE_DEPLOYMENT_KINDS)
    gates = [*gates, *existing.values()]
    # Risk (docs/cab.md): scored at submission; a high score adds the policy's gate,
    # with the same approve-by time as the others.
    assessment = risk_assess(change=change, trigger="submitted", actor=actor)
    extra = _add_risk_gate(actor=actor, change=change, policy=policy, assessment=assessment)
    if extra:
        if _set_approve_by(change, [extra]):
            extra.save(update_fields=["expires_at", "expiry_warned_at"])
        gates.append(extra)
    # The policy document's rules (conditions the rows cannot hold) add gates or counts.
    version, facts, outcome = governing.decide(change, action="submit",
                                               risk_score=assessment.score)
    if version is not None:
        gates = _apply_rule_gates(change, gates, governing.rule_gates(version, outcome))
    before = change.status
    waiting = any(g.status != Gate.Status.APPROVED for g in gates)
    change.status = (ChangeRequest.Status.PENDING_APPROVAL if waiting
                     else _approved_status(change))
    change.submitted_at = clock.now()
    if not waiting:
        _set_execute_by(change)
    change.save(update_fields=["status", "submitted_at", "execute_by", "execute_warned_at"])
    unfillable = unsatisfiable_gates(change)
    audit_record(actor=actor, action="change.submitted", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status,
                        "gates": {g.role: g.required for g in gates},
                        "unsatisfiable": [b.message for b in unfillable],
                        **governing.record(version, facts),
                        **({"policy_rules": outcome["rules"]} if outcome else {})})
    signals.send_in_transaction(signals.change_submitted, change_id=change.pk,
                              status=change.status, at=change.submitted_at)
    if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
        _start_by_itself(change=change, why=f"{change.reference} submitted with no gates "
                                            "to pass, to deploy when approved")


def _apply_rule_gates(change: ChangeRequest, gates: list[Gate], wanted: dict[str, int]
                      ) -> list[Gate]:
    """Raise or add the gates the policy's rules ask for; a raised count reopens an
    approved gate that no longer has enough approvals."""
    by_role = {g.role: g for g in gates}
    for role, count in wanted.items():
        gate = by_role.get(role)
        if gate is None:
            gate = Gate.objects.create(change=change, role=role, required=count)
            if _set_approve_by(change, [gate]):
                gate.save(update_fields=["expires_at", "expiry_warned_at"])
            by_role[role] = gate
        elif gate.required < count:
            gate.required = count
            if gate.status == Gate.Status.APPROVED:
                gate.status = Gate.Status.PENDING
            gate.save(update_fields=["required", "status"])
    return list(by_role.values())


def _approved_status(change: ChangeRequest) -> str:
    if change.scheduled_for and change.scheduled_for > clock.now():
        return ChangeRequest.Status.SCHEDULED
    return ChangeRequest.Status.APPROVED


@assurance.refusals_audited
def change_request_update(*, actor, change: ChangeRequest, **fields) -> ChangeRequest:
    """The requester edits an open change; approvals whose concern changed no longer count."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise Invalid(f"these fields cannot be edited: {', '.join(sorted(unknown))}")
    if "strategy" in fields and fields["strategy"] not in Strategy.values:
        raise Invalid("unknown strategy", fields={"strategy": [
            f"Choose one of {', '.join(Strategy.values)}."]})
    try:
        return _update(actor=actor, change=change, fields=fields)
    except Refused as exc:
        _refusal_audited("change.edit.refused", actor, change, exc,
                         fields=sorted(fields))
        raise


def _update(*, actor, change: ChangeRequest, fields: dict) -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.requested_by_id != actor.pk:
            raise Refused("only the requester edits a change", code="not_requester")
        if change.status not in ChangeRequest.OPEN:
            raise InvalidTransition(f"{change.reference} is "
                                    f"{change.get_status_display().lower()} and cannot be edited")
        if (change.change_type == ChangeType.EMERGENCY and "rollback_plan" in fields
                and not (fields["rollback_plan"] or "").strip()):
            raise Invalid("an emergency change needs a rollback plan", fields={
                "rollback_plan": ["An emergency change needs a rollback plan (SOP 5.3)."]})
        if fields.get("scheduled_for"):
            _require_deploy_for_self_start(actor, change.environment,
                                           deploy_when_approved=False,
                                           scheduled_for=fields["scheduled_for"])
            # The one who set the time is the one the scheduled start acts for.
            fields = {**fields, "deployer": actor}
        before = _snapshot(change)
        for name, value in fields.items():
            setattr(change, name, value)
        change.save(update_fields=list(fields))
        reopened = _reopen_changed_concerns(change, f"{change.reference} was edited")
        if change.submitted_at:
            risk_assess(change=change, trigger="edited", actor=actor)
        if change.status == ChangeRequest.Status.APPROVED and change.scheduled_for and \
                change.scheduled_for > clock.now():
            change.status = ChangeRequest.Status.SCHEDULED
            change.save(update_fields=["status"])
        audit_record(actor=actor, action="change.edited", obj=change,
                     environment=change.environment.slug, before=before,
                     after={**_snapshot(change), "reopened": reopened})
    return change


def may_cancel(actor, change: ChangeRequest) -> bool:
    """The requester, or someone who may deploy to the change's environment."""
    return change.requested_by_id == actor.pk or has_env_perm(actor, "deploy",
                                                              change.environment)


def change_request_cancel(*, actor, change: ChangeRequest, reason: str = "") -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.status not in ChangeRequest.OPEN:
            raise InvalidTransition(
                f"{change.reference} is {change.get_status_display().lower()} and cannot be "
                "cancelled")
        if not may_cancel(actor, change):
            raise Refused("only the requester or someone who may deploy there can cancel",
                          code="not_permitted")
        before = change.status
        change.status = ChangeRequest.Status.CANCELLED
        change.closed_at = clock.now()
        change.save(update_fields=["status", "closed_at"])
        audit_record(actor=actor, action="change.cancelled", obj=change,
                     environment=change.environment.slug, before={"status": before},
                     after={"status": change.status}, reason=reason)
    return change
