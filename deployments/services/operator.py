"""On-call's decisions on a deployment: cancel it, or, when it needs attention, retry
its interrupted step or mark that step done."""

from __future__ import annotations

import uuid

from django.db import transaction

from audit.trail import System, audit_record
from catalog.permissions import has_env_perm
from core import clock
from core.errors import Invalid, InvalidTransition, Refused
from deployments.models import Deployment, DeploymentStep
from deployments.services.queue import _announce_end, _enqueue, queue_position
from deployments.services.run import MAX_ATTEMPTS, run_is_live
from identity import assurance


def _interrupted_step(deployment: Deployment) -> DeploymentStep | None:
    return (deployment.steps.filter(status=DeploymentStep.Status.RUNNING)
            .select_related("target").order_by("position").first())


def may_operate(actor, environment) -> bool:
    """Who may cancel a running deployment or decide on an interrupted step there: those
    who may deploy or roll back in the environment."""
    return (has_env_perm(actor, "deploy", environment)
            or has_env_perm(actor, "rollback", environment))


def _decide_interrupted(*, actor, deployment: Deployment, decision: str,
                        reason: str) -> Deployment:
    """Retry the interrupted step, or record it as done, and let the run go on."""
    reason = (reason or "").strip()
    with transaction.atomic():
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        if not may_operate(actor, locked.environment):
            raise Refused(f"you may not act on deployments in {locked.environment.name}",
                          code="not_permitted")
        # Retrying or marking done a Production step decides what runs there next: it
        # needs a second factor used recently, as deploying does (SOP 10.2).
        verb = "retry" if decision == "retried" else "mark done"
        factor = (assurance.require_fresh_second_factor(
            actor=actor, doing=f"{verb} a step of a deployment in {locked.environment.name}",
            environment=locked.environment.slug)
            if locked.environment.production else {})
        if locked.status != Deployment.Status.NEEDS_ATTENTION:
            raise InvalidTransition(
                f"deployment #{locked.pk} does not need attention (it is {locked.status})",
                code="not_needs_attention")
        step = _interrupted_step(locked)
        who = actor.get_username()
        if step is not None:
            if decision == "retried":
                # Pending again: the next run claims and runs it as a new attempt.
                DeploymentStep.objects.filter(pk=step.pk).update(
                    status=DeploymentStep.Status.PENDING)
            else:
                DeploymentStep.objects.filter(pk=step.pk).update(
                    status=DeploymentStep.Status.SUCCEEDED, finished_at=clock.now(),
                    detail=f"marked done by {who}" + (f": {reason}" if reason else ""))
        locked.status = Deployment.Status.RUNNING
        locked.failure_reason = ""
        locked.heartbeat_at = clock.now()
        locked.attempts = min(locked.attempts, MAX_ATTEMPTS - 1)
        locked.save(update_fields=["status", "failure_reason", "heartbeat_at", "attempts"])
        audit_record(actor=actor, action=f"deployment.step_{decision}",
                     obj=locked, environment=locked.environment.slug,
                     before={"status": Deployment.Status.NEEDS_ATTENTION},
                     after={"status": locked.status,
                            "step": step.name if step else None, **factor}, reason=reason)
        transaction.on_commit(lambda: _enqueue(locked.pk, uuid.uuid4().hex))
    return locked


@assurance.refusals_audited
def deployment_retry_step(*, actor, deployment: Deployment, reason: str = "") -> Deployment:
    """On-call checked the target: run the interrupted step again, then the rest.

    Needs `deploy` (or `rollback`) on the environment; audited.
    """
    return _decide_interrupted(actor=actor, deployment=deployment, decision="retried",
                               reason=reason)


@assurance.refusals_audited
def deployment_mark_step_done(*, actor, deployment: Deployment, reason: str) -> Deployment:
    """On-call checked the target and found the interrupted step applied: go on after it.

    Needs `deploy` (or `rollback`) on the environment and a reason; audited.
    """
    if not (reason or "").strip():
        raise Invalid("marking a step done needs a reason",
                      fields={"reason": ["Say what you checked."]})
    return _decide_interrupted(actor=actor, deployment=deployment, decision="marked_done",
                               reason=reason)


def deployment_cancel(*, actor, deployment: Deployment, reason: str = "") -> Deployment:
    """Stop a queued or running deployment.

    A queued one, or a running one whose worker is gone, is cancelled at once. A
    running one goes to ``stopping``: its step in progress ends, then the worker marks
    it cancelled (``_stopped``). Stopping still counts as active, so no other
    deployment starts on its targets meanwhile.
    """
    with transaction.atomic():
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        if not isinstance(actor, System) and not may_operate(actor, locked.environment):
            raise Refused(f"you may not cancel deployments in {locked.environment.name}",
                          code="not_permitted")
        if locked.is_final:
            raise InvalidTransition(f"deployment #{locked.pk} has already {locked.status}")
        if locked.status == Deployment.Status.STOPPING:
            raise InvalidTransition(f"deployment #{locked.pk} is already stopping",
                                    code="already_stopping")
        before = locked.status
        locked.failure_reason = reason or "cancelled"
        if before == Deployment.Status.RUNNING and run_is_live(locked.pk):
            # A worker is in a step: it ends that step, then marks the deployment
            # cancelled. Without a live run (its worker died) it is cancelled at once.
            locked.status = Deployment.Status.STOPPING
            locked.save(update_fields=["status", "failure_reason"])
            audit_record(actor=actor, action="deployment.stopping", obj=locked,
                         environment=locked.environment.slug, before={"status": before},
                         after={"status": locked.status}, reason=reason)
            return locked
        position = queue_position(locked)
        locked.status = Deployment.Status.CANCELLED
        locked.finished_at = clock.now()
        locked.save(update_fields=["status", "finished_at", "failure_reason"])
        audit_record(actor=actor, action="deployment.cancelled", obj=locked,
                     environment=locked.environment.slug, before={"status": before},
                     after={"status": locked.status, "queue_position": position},
                     reason=reason)
        _announce_end(locked, locked.status)
    return locked
