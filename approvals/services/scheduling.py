"""Starting a change's deployment: by hand (Deploy), by itself once approved (deploy
when approved), at its scheduled time (the beat), and the check the engine asks for
before a deployment that waited in the queue starts.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction

from approvals import signals
from approvals.models import Approval, ChangeRequest, RiskAssessment
from approvals.selectors import Blocker, change_blockers
from approvals.services import governing
from approvals.services.deadlines import _check_not_lapsed
from approvals.services.fingerprints import change_version
from approvals.services.guards import _refusal_audited, _step_up_for_production
from approvals.services.reopening import (
    _outdated_approvals,
    _reopen,
    _reopen_approvals_that_stopped_counting,
    _stale_approvals,
    _stale_refusal,
    _tell_approver,
)
from audit.trail import System, audit_record
from catalog.models import Environment
from catalog.permissions import has_env_perm
from configuration.selectors import digests_of_version, version_for
from core import clock
from core import context as request_context
from core.context import RequestContext
from core.errors import DeploymentInProgress, InvalidTransition, NotReady, Refused
from deployments import inputs as deployment_inputs
from deployments import services as deployment_services
from deployments.models import Deployment
from identity import assurance

logger = logging.getLogger(__name__)


@assurance.refusals_audited
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
            factor = _step_up_for_production(actor, change.environment,
                                             f"deploy to {change.environment.name}")
            stale = _reopen_approvals_that_stopped_counting(
                change, f"{actor.get_username()} deploying {change.reference} by hand")
            if not stale:
                return _start_deployment(actor=actor, change=change, second_factor=factor)
            # The reopened gates are kept (this transaction commits) and the start refused.
            refusal = _stale_refusal(change, stale)
            audit_record(actor=actor, action="change.deploy.refused", obj=change,
                         environment=change.environment.slug,
                         after={"code": "approval_conflict", "blockers": refusal.blockers,
                                **factor}, reason=refusal.detail)
        raise refusal
    except Refused as exc:
        _refusal_audited("change.deploy.refused", actor, change, exc)
        raise
    except NotReady as exc:
        # What would run is no longer what was approved: on the record, like a refusal.
        outdated = [b for b in exc.blockers or []
                    if b.get("code") in ("approval_outdated", "approval_lapsed")]
        if outdated:
            _refusal_audited("change.deploy.refused", actor, change, exc, blockers=outdated)
        raise


def _hold_environment_if_it_may_start(change: ChangeRequest) -> None:
    """A change that may start by itself within this transaction (deploy when approved)
    locks its environment's row before anything is written to the audit trail: the
    order every deployment and environment lock takes (the environment's row, then the
    trail's chain lock). Taken the other way round, a decision holding the chain lock
    and waiting for the environment would deadlock with on-call locking that
    environment, or with another deployment starting there."""
    if change.deploy_when_approved:
        change.environment = Environment.objects.select_for_update().get(
            pk=change.environment_id)


def _start_by_itself(*, change: ChangeRequest, why: str) -> Deployment | None:
    """Start the deployment its deployer asked the portal to start (once approved, or at
    the scheduled time), inside the transaction holding the change's row lock.

    The deployer's `deploy` permission is checked again now: if it is gone, nothing
    starts, the change stays approved for someone who may deploy there, and the refusal
    is audited (and so notified to the deployer and requester). The deployment and the
    audit trail name the deployer, not the approver or the clock that set it off.
    """
    deployer = change.deployer or change.requested_by
    stale = _reopen_approvals_that_stopped_counting(change, why)
    if stale:
        refusal = _stale_refusal(change, stale)
        audit_record(actor=System(why), action="change.start_deferred", obj=change,
                     environment=change.environment.slug,
                     after={"status": change.status, "code": "approval_conflict",
                            "blockers": refusal.blockers,
                            "deployer": deployer.get_username(), "trigger": why},
                     reason=refusal.detail)
        return None
    if not has_env_perm(deployer, "deploy", change.environment):
        audit_record(actor=System(why), action="change.start_refused", obj=change,
                     environment=change.environment.slug,
                     before={"status": change.status},
                     after={"status": change.status, "code": "not_permitted",
                            "deployer": deployer.get_username(), "trigger": why},
                     reason=f"{deployer.get_username()} may no longer deploy to "
                            f"{change.environment.name}; the change stays approved until "
                            "someone who may deploy there starts it")
        signals.send_in_transaction(signals.change_start_refused, change_id=change.pk,
                                  deployer=deployer.get_username(), trigger=why,
                                  at=clock.now())
        return None
    ctx = request_context.current()
    # The deployer acts, not the caller's API token (if the last approver used one).
    bound = request_context.bind_request(RequestContext(
        request_id=ctx.request_id, ip=ctx.ip, user_agent=ctx.user_agent))
    try:
        # A savepoint: a change that is approved but not ready yet (outside its window,
        # checklist open, another deployment running) stays approved, and the decision
        # that approved it stands; it does not start later by surprise.
        with transaction.atomic():
            return _start_deployment(actor=deployer, change=change, trigger=why)
    except (NotReady, DeploymentInProgress) as exc:
        audit_record(actor=System(why), action="change.start_deferred", obj=change,
                     environment=change.environment.slug,
                     after={"status": change.status, "code": exc.code,
                            "blockers": getattr(exc, "blockers", None) or [],
                            "deployer": deployer.get_username(), "trigger": why,
                            **governing.record(governing.active_version())},
                     reason="approved, but not ready to deploy; someone who may deploy "
                            "there starts it when it is")
        return None
    finally:
        request_context.unbind_request(bound)


def _start_deployment(*, actor, change: ChangeRequest, trigger: str = "",
                      second_factor: dict | None = None) -> Deployment:
    """Inside the transaction holding the change's row lock: check again, then start."""
    if change.status == ChangeRequest.Status.DEPLOYING:
        raise InvalidTransition(f"{change.reference} is already deploying",
                                code="already_deploying")
    _check_not_lapsed(change)
    # The environment's row too: a lock taken by on-call at this moment either lands
    # before this check or waits until the deployment exists.
    change.environment = Environment.objects.select_for_update().get(
        pk=change.environment_id)
    # What will run, read once: the approvals are checked against it and the deployment
    # keeps it and runs it, so an edit landing meanwhile changes neither.
    number, *digests = version_for(change)
    inputs = deployment_inputs.inputs_of(change.release.application, change.environment)
    blockers = change_blockers(change) + _outdated_approvals(
        change, digests=tuple(digests), inputs=inputs)
    # The policy document's start restrictions (conditions on the time and the change).
    policy, facts, outcome = governing.decide(change, action="start", actor=actor,
                                              risk_score=_latest_score(change))
    blockers += [Blocker(b["code"], b["reason"]) for b in (outcome or {}).get("blockers", [])
                 if b["code"] in governing.START_CODES]
    if blockers:
        raise NotReady(
            f"{change.reference} cannot deploy yet: " + "; ".join(b.message for b in blockers),
            blockers=[b.as_dict() for b in blockers])
    version = change_version(change, digests=tuple(digests), inputs=inputs)
    deployment = deployment_services.deployment_create(
        actor=actor, release=change.release, environment=change.environment,
        strategy=change.strategy, change_id=change.pk,
        inputs={**inputs, "strategy": change.strategy, "configuration_version": number,
                "change_version": version, "approval": _approval_record(change, version)})
    before = change.status
    change.status = ChangeRequest.Status.DEPLOYING
    change.save(update_fields=["status"])
    audit_record(actor=actor, action="change.deploying", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status, "deployment": deployment.pk,
                        "preflight": "clear", "deployer": actor.get_username(),
                        "version": version, "configuration_version": number,
                        "trigger": trigger or "deployed by hand", **(second_factor or {}),
                        **governing.record(policy, facts)})
    signals.send_in_transaction(signals.change_deploying, change_id=change.pk,
                              deployment_id=deployment.pk, at=clock.now())
    return deployment


def _latest_score(change: ChangeRequest) -> int | None:
    return (RiskAssessment.objects.filter(change=change).order_by("-created_at", "-pk")
            .values_list("score", flat=True).first())


def _approval_record(change: ChangeRequest, version: str) -> dict:
    """What the deployment keeps of the approvals it was released with: the portal signs
    it for the targets (``deployments.statements``)."""
    approvals = (Approval.objects.filter(change=change, withdrawn_at__isnull=True,
                                         decision=Approval.Decision.APPROVED)
                 .select_related("approver", "gate").order_by("decided_at", "pk"))
    return {
        "change_id": change.pk, "change": change.reference, "fingerprint": version,
        "gates": list(change.gates.order_by("pk").values_list("role", flat=True)),
        "approvers": [{"user": a.approver.get_username(), "gate": a.gate.role}
                      for a in approvals],
    }


def deployment_start_check(*, deployment: Deployment) -> str:
    """Whether a change's deployment that waited may start now: "" if it may, else why
    not. The engine asks (``deployments.services.register_start_check``, registered in
    ``ApprovalsConfig.ready``) inside the transaction holding the deployment's row lock,
    when the deployment is given its target after waiting in the queue and when a worker
    claims it.

    The same checks as every other start, against what this deployment will run (the
    inputs and configuration version it keeps): an approval whose approver (or the
    delegator they stood in for) has since become the requester, an author or a merger
    of the release no longer counts; an approval given before a part of its concern
    changed does not match what will run. Either reopens those gates, audited
    (``approval.invalidated``), the change goes back to waiting for approval
    (``change.start_refused``, with the blockers) and the engine cancels the deployment
    with the reason returned.
    """
    change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
              .filter(pk=deployment.change_id).first())
    if change is None:
        return f"the change #{deployment.change_id} that released it does not exist"
    if change.status != ChangeRequest.Status.DEPLOYING:
        # Only a start that passed the checks makes a change deploying; a deployment of a
        # change in any other state was not released by it (a repair in the database).
        return (f"{change.reference} is {change.get_status_display().lower()}, not "
                "deploying: it did not release this deployment")
    why = f"deployment #{deployment.pk} of {change.reference} about to start from the queue"
    stale = _reopen_approvals_that_stopped_counting(change, why)
    kept = deployment.inputs or {}
    outdated: list[tuple[Approval, list[str]]] = []
    if {"executor", "executor_settings", "targets", "environment_settings"} <= set(kept):
        digests = digests_of_version(change.release.application_id, change.environment_id,
                                     kept.get("configuration_version"))
        outdated = _stale_approvals(change, digests=digests, inputs=kept)
    for approval, changed in outdated:
        before = {"gate": approval.gate.status, "change": change.status}
        _reopen(change, approval, f"superseded: {', '.join(changed)} changed")
        audit_record(actor=System(why), action="approval.invalidated", obj=change,
                     environment=change.environment.slug, before=before,
                     after={"role": approval.gate.role,
                            "approver": approval.approver.get_username(),
                            "changed": changed, "gate": approval.gate.status})
        _tell_approver(change, approval, changed)
    if not stale and not outdated:
        return ""
    blockers = [Blocker(*item.as_blocker()) for item in stale] + [
        Blocker("approval_outdated",
                f"the {approval.gate.get_role_display()} approval was given before the "
                f"{', '.join(changed)} changed; it has to be given again")
        for approval, changed in outdated]
    change.status = ChangeRequest.Status.PENDING_APPROVAL
    change.save(update_fields=["status"])
    reason = "; ".join(b.message for b in blockers) + (
        f"; {change.reference} waits for approval again")
    audit_record(actor=System(why), action="change.start_refused", obj=change,
                 environment=change.environment.slug,
                 before={"status": ChangeRequest.Status.DEPLOYING},
                 after={"status": change.status, "deployment": deployment.pk,
                        "code": blockers[0].code,
                        "blockers": [b.as_dict() for b in blockers],
                        "trigger": "queue"},
                 reason=reason)
    return reason


def changes_start_scheduled(*, now: datetime | None = None) -> list[int]:
    """Beat: start scheduled changes whose time has come, only if still ready.

    Each change in its own transaction: one that fails (its target busy, say) goes
    back to approved with the failure audited, and the others still start.
    """
    now = now or clock.now()
    started = []
    due = list(ChangeRequest.objects.filter(status=ChangeRequest.Status.SCHEDULED,
                                            scheduled_for__lte=now).values_list("pk", flat=True))
    for pk in due:
        try:
            deployment_id = _start_scheduled(pk)
        except Exception as exc:
            logger.exception("scheduled change %s failed to start", pk)
            _schedule_failed(pk, exc)
            continue
        if deployment_id is not None:
            started.append(deployment_id)
    return started


def _start_scheduled(pk: int) -> int | None:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",), skip_locked=True)
                  .with_related().filter(pk=pk, status=ChangeRequest.Status.SCHEDULED)
                  .first())
        if change is None:
            return None
        when = f"{change.scheduled_for:%Y-%m-%d %H:%M}"
        system = System(f"{change.reference} scheduled for {when}")
        if _reopen_approvals_that_stopped_counting(change, system.reason):
            # Back to waiting for approval: the beat does not start it.
            return None
        blockers = change_blockers(change)
        if blockers:
            # Not ready at its time: it does not start later by surprise.
            change.status = ChangeRequest.Status.APPROVED
            change.save(update_fields=["status"])
            audit_record(actor=system, action="change.schedule_missed", obj=change,
                         environment=change.environment.slug,
                         before={"status": ChangeRequest.Status.SCHEDULED},
                         after={"status": change.status,
                                "blockers": [b.as_dict() for b in blockers]},
                         reason="not ready at its scheduled time")
            return None
        change.status = ChangeRequest.Status.APPROVED
        deployment = _start_by_itself(change=change, why=system.reason)
        if deployment is None:
            # The deployer may no longer deploy: it waits, approved, for someone who may.
            change.save(update_fields=["status"])
            return None
        return deployment.pk


def _schedule_failed(pk: int, exc: Exception) -> None:
    """A scheduled change that could not start: back to approved, on the record."""
    detail = getattr(exc, "detail", None) or f"{exc.__class__.__name__}"
    try:
        with transaction.atomic():
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .filter(pk=pk, status=ChangeRequest.Status.SCHEDULED).first())
            if change is None:
                return
            change.status = ChangeRequest.Status.APPROVED
            change.save(update_fields=["status"])
            audit_record(actor=System(f"{change.reference} scheduled start"),
                         action="change.schedule_failed", obj=change,
                         environment=change.environment.slug,
                         before={"status": ChangeRequest.Status.SCHEDULED},
                         after={"status": change.status,
                                "code": getattr(exc, "code", "error")},
                         reason=f"could not start at its scheduled time: {detail}")
    except Exception:
        logger.exception("recording the failed start of scheduled change %s failed", pk)
