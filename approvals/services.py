"""State changes of change requests: request, submit, decide, deploy, cancel.

Every rule is here, once; pages, the API and tasks call these functions.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from approvals.models import (
    Approval,
    ApprovalPolicy,
    ChangeRequest,
    ChangeType,
    Gate,
    GateRole,
    Strategy,
)
from approvals.selectors import change_blockers
from deployments import services as deployment_services
from deployments.models import Deployment, Environment, Release
from portal.audit import audit_record
from portal.errors import (
    AlreadyDecided,
    DomainError,
    Invalid,
    InvalidTransition,
    NotEligible,
    NotReady,
    Refused,
    SelfApproval,
)
from portal.permissions import has_env_perm


def _snapshot(change: ChangeRequest) -> dict:
    return {
        "status": change.status,
        "release": change.release.version,
        "environment": change.environment.slug,
        "change_type": change.change_type,
        "strategy": change.strategy,
    }


def _refusal_audited(action: str, actor, change: ChangeRequest, exc: DomainError, **extra):
    """Record a refused attempt in its own transaction, so it survives the refusal."""
    with transaction.atomic():
        audit_record(actor=actor, action=action, obj=change, environment=change.environment.slug,
                     after={"code": exc.code, **extra}, reason=exc.detail)


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
    if not has_env_perm(actor, "request_change", environment):
        raise Refused(f"you may not request changes to {environment.name}",
                      code="not_permitted")
    with transaction.atomic():
        change = ChangeRequest.objects.create(
            release=release, environment=environment, change_type=change_type,
            strategy=strategy, rollback_plan=rollback_plan, risk=risk, impact=impact,
            on_call=on_call, scheduled_for=scheduled_for,
            deploy_when_approved=deploy_when_approved, requested_by=actor,
        )
        audit_record(actor=actor, action="change.created", obj=change,
                     environment=environment.slug, after=_snapshot(change))
        if not draft:
            _submit(actor=actor, change=change)
    return change


def change_request_submit(*, actor, change: ChangeRequest) -> ChangeRequest:
    with transaction.atomic():
        change = ChangeRequest.objects.select_for_update().with_related().get(pk=change.pk)
        if change.requested_by_id != actor.pk:
            raise Refused("only the requester submits a draft", code="not_requester")
        _submit(actor=actor, change=change)
    return change


def _submit(*, actor, change: ChangeRequest) -> None:
    """Draft -> pending approval, with one gate per required role of the policy."""
    if change.status != ChangeRequest.Status.DRAFT:
        raise InvalidTransition(f"{change.reference} is {change.get_status_display().lower()}, "
                                "not a draft")
    policy = (
        ApprovalPolicy.objects.filter(environment=change.environment,
                                      change_type=change.change_type)
        .prefetch_related("gates").first()
    )
    gates = [
        Gate(change=change, role=pg.role, required=pg.required)
        for pg in (policy.gates.all() if policy else [])
    ]
    Gate.objects.bulk_create(gates)
    before = change.status
    change.status = (ChangeRequest.Status.PENDING_APPROVAL if gates
                     else ChangeRequest.Status.APPROVED)
    change.submitted_at = timezone.now()
    change.save(update_fields=["status", "submitted_at"])
    audit_record(actor=actor, action="change.submitted", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status,
                        "gates": {g.role: g.required for g in gates}})
    if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
        _start_deployment(actor=actor, change=change)


def _decide(*, actor, change: ChangeRequest, role: str, decision: str, comment: str) -> Gate:
    action = f"gate.{decision}"
    try:
        with transaction.atomic():
            # The change row lock serialises every decision on this change:
            # approve racing reject, or two approvers at once, settle here.
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .get(pk=change.pk))
            if change.status != ChangeRequest.Status.PENDING_APPROVAL:
                raise AlreadyDecided(
                    f"{change.reference} is {change.get_status_display().lower()}; "
                    "it takes no more decisions"
                )
            gate = change.gates.filter(role=role).first()
            if gate is None:
                raise Invalid(f"{change.reference} has no {role} gate",
                              fields={"gate": [f"This change has no {role!r} gate."]})
            if change.requested_by_id == actor.pk:
                raise SelfApproval("you requested this change, so you cannot decide its gates")
            if not has_env_perm(actor, GateRole(role).permission, change.environment):
                raise NotEligible(
                    f"you may not decide the {gate.get_role_display()} gate "
                    f"on {change.environment.name}"
                )
            if gate.status != Gate.Status.PENDING:
                raise AlreadyDecided(f"the {gate.get_role_display()} gate is already "
                                     f"{gate.status}")
            already = change.approvals.filter(approver=actor).select_related("gate").first()
            if already is not None:
                raise NotEligible(
                    f"you already decided the {already.gate.get_role_display()} gate of "
                    f"{change.reference}; one person decides at most one gate",
                    code="one_gate_per_person",
                )
            Approval.objects.create(gate=gate, change=change, approver=actor,
                                    decision=decision, comment=comment)
            before = {"gate": gate.status, "change": change.status}
            if decision == Approval.Decision.REJECTED:
                gate.status = Gate.Status.REJECTED
                change.status = ChangeRequest.Status.REJECTED
                change.closed_at = timezone.now()
            else:
                count = gate.approvals.filter(decision=Approval.Decision.APPROVED).count()
                if count >= gate.required:
                    gate.status = Gate.Status.APPROVED
            gate.save(update_fields=["status"])
            if (decision == Approval.Decision.APPROVED
                    and not change.gates.exclude(status=Gate.Status.APPROVED).exists()):
                change.status = ChangeRequest.Status.APPROVED
            change.save(update_fields=["status", "closed_at"])
            audit_record(actor=actor, action=action, obj=change,
                         object_repr=f"{change} / {gate.get_role_display()}",
                         environment=change.environment.slug, before=before,
                         after={"gate": gate.status, "change": change.status, "role": role,
                                "comment": comment})
            if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
                _start_deployment(actor=actor, change=change)
            return gate
    except Refused as exc:
        _refusal_audited(f"{action}.refused", actor, change, exc, role=role)
        raise


def gate_approve(*, actor, change: ChangeRequest, role: str, comment: str = "") -> Gate:
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.APPROVED, comment=comment.strip())


def gate_reject(*, actor, change: ChangeRequest, role: str, comment: str) -> Gate:
    if not comment or not comment.strip():
        raise Invalid("a rejection needs a comment saying why",
                      fields={"comment": ["Say why the change is rejected."]})
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.REJECTED, comment=comment.strip())


def change_request_deploy(*, actor, change: ChangeRequest) -> Deployment:
    try:
        with transaction.atomic():
            # Two deploy presses at once: the row lock lets one through; the
            # other sees the change already deploying.
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .get(pk=change.pk))
            if not has_env_perm(actor, "deploy", change.environment):
                raise Refused(f"you may not deploy to {change.environment.name}",
                              code="not_permitted")
            return _start_deployment(actor=actor, change=change)
    except Refused as exc:
        _refusal_audited("change.deploy.refused", actor, change, exc)
        raise


def _start_deployment(*, actor, change: ChangeRequest) -> Deployment:
    """Inside the transaction holding the change's row lock: check again, then start."""
    if change.status == ChangeRequest.Status.DEPLOYING:
        raise InvalidTransition(f"{change.reference} is already deploying",
                                code="already_deploying")
    blockers = change_blockers(change)
    if blockers:
        raise NotReady(
            f"{change.reference} cannot deploy yet: "
            + "; ".join(b.message for b in blockers),
            blockers=[b.as_dict() for b in blockers],
        )
    deployment = deployment_services.deployment_create(
        actor=actor, release=change.release, environment=change.environment,
        strategy=change.strategy, change_id=change.pk,
    )
    before = change.status
    change.status = ChangeRequest.Status.DEPLOYING
    change.save(update_fields=["status"])
    audit_record(actor=actor, action="change.deploying", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status, "deployment": deployment.pk})
    return deployment


def change_request_cancel(*, actor, change: ChangeRequest, reason: str = "") -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.status not in ChangeRequest.OPEN:
            raise InvalidTransition(
                f"{change.reference} is {change.get_status_display().lower()} and cannot be "
                "cancelled")
        if change.requested_by_id != actor.pk and not has_env_perm(
                actor, "deploy", change.environment):
            raise Refused("only the requester or someone who may deploy there can cancel",
                          code="not_permitted")
        before = change.status
        change.status = ChangeRequest.Status.CANCELLED
        change.closed_at = timezone.now()
        change.save(update_fields=["status", "closed_at"])
        audit_record(actor=actor, action="change.cancelled", obj=change,
                     environment=change.environment.slug, before={"status": before},
                     after={"status": change.status}, reason=reason)
    return change


def change_request_deployment_finished(*, deployment: Deployment, status: str) -> None:
    """Close the change that released a deployment once the deployment ends."""
    from portal.audit import System

    if not deployment.change_id:
        return
    outcome = {
        Deployment.Status.SUCCEEDED: ChangeRequest.Status.DEPLOYED,
        Deployment.Status.FAILED: ChangeRequest.Status.FAILED,
        Deployment.Status.ROLLED_BACK: ChangeRequest.Status.ROLLED_BACK,
        Deployment.Status.CANCELLED: ChangeRequest.Status.APPROVED,
    }.get(status)
    if outcome is None:
        return
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .filter(pk=deployment.change_id, status=ChangeRequest.Status.DEPLOYING)
                  .first())
        if change is None:
            return
        change.status = outcome
        if outcome != ChangeRequest.Status.APPROVED:
            change.closed_at = timezone.now()
        change.save(update_fields=["status", "closed_at"])
        audit_record(actor=System(f"deployment #{deployment.pk} {status}"),
                     action="change.closed" if change.closed_at else "change.reopened",
                     obj=change, environment=change.environment.slug,
                     before={"status": ChangeRequest.Status.DEPLOYING},
                     after={"status": outcome, "deployment": deployment.pk})
