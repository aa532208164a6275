"""The queue of an application in an environment: which deployment holds the target,
which wait and in what order, the start checks a waiting one meets, handing a
deployment to its environment's workers, and the end of a deployment that lets the
next one start."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max

from audit.trail import System, audit_record
from core import clock, dispatch
from deployments.models import Deployment, DeploymentLogLine
from deployments.signals import deployment_ending, deployment_finished

logger = logging.getLogger(__name__)

# --- the queue of an application in an environment ---------------------------

# Class of the PostgreSQL transaction advisory lock under which the next queued
# deployment of an environment is given the target: (class, environment id).
LANE_LOCK_CLASS = 7303
# Deployments that hold their application's target in an environment (the head).
HOLDING = Deployment.ACTIVE | {Deployment.Status.NEEDS_ATTENTION}


def deploy_queue(environment_slug: str) -> str:
    """The Celery queue of an environment's deployments: only workers holding that
    environment's credentials consume it (SOP 10.2)."""
    return f"{settings.PORTAL_DEPLOY_QUEUE_PREFIX}{environment_slug}"


def _lane_lock(environment_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       [LANE_LOCK_CLASS, environment_id])


def queue_head(application_id: int, environment_id: int) -> Deployment | None:
    """The deployment holding the application's target in the environment (queued to
    run, running, stopping or needing attention); None when none does."""
    return (Deployment.objects.filter(application_id=application_id,
                                      environment_id=environment_id, holds_target=True,
                                      status__in=HOLDING)
            .select_related("release").first())


def _waiting(application_id: int, environment_id: int):
    """Queued deployments waiting their turn, in order: rollbacks first, then first in
    first out."""
    from django.db.models import Case, IntegerField, Value, When

    return (Deployment.objects.filter(application_id=application_id,
                                      environment_id=environment_id,
                                      status=Deployment.Status.QUEUED, holds_target=False)
            .annotate(rank=Case(When(kind=Deployment.Kind.ROLLBACK, then=Value(0)),
                                default=Value(1), output_field=IntegerField()))
            .order_by("rank", "created_at", "id"))


def queue_position(deployment: Deployment) -> int | None:
    """1 for the next to start, 2 behind it, ...; None when it is not waiting."""
    if deployment.status != Deployment.Status.QUEUED or deployment.holds_target:
        return None
    ids = list(_waiting(deployment.application_id, deployment.environment_id)
               .values_list("pk", flat=True))
    return ids.index(deployment.pk) + 1 if deployment.pk in ids else None


def _advance_after_commit(application_id: int, environment_id: int) -> None:
    """Once the transaction commits, start the next queued deployment if none holds
    the target, in a transaction of its own (the beat's sweep does it if this fails)."""

    def advance() -> None:
        try:
            with transaction.atomic():
                _advance_queue(application_id=application_id, environment_id=environment_id)
        except Exception:  # noqa: BLE001 - the sweep (deployments_resume_stale) heals it
            logger.exception("the deployment queue of application %s in environment %s did "
                             "not move on; the sweep moves it", application_id,
                             environment_id)

    transaction.on_commit(advance)


def _advance_queue(*, application_id: int, environment_id: int) -> Deployment | None:
    """Start the next queued deployment when none holds the target; in a transaction
    of its own (after the commit that ended the previous one, or the sweep's), under
    the queue's lock and before any audit write. Returns it.

    A deployment of a change is first put to the start checks (``register_start_check``)
    under its row lock: one they refuse is cancelled with their reason instead, and the
    queue moves on to the next one after this transaction commits."""
    _lane_lock(environment_id)
    if queue_head(application_id, environment_id) is not None:
        return None
    nxt = (_waiting(application_id, environment_id).select_for_update(of=("self",))
           .select_related("environment").first())
    if nxt is None:
        return None
    refusal = _start_refusal(nxt)
    if refusal:
        _cancel_refused_start(nxt, refusal)
        return None
    nxt.holds_target = True
    # Sent now: the sweep resends it only if it has not started after a while.
    nxt.heartbeat_at = clock.now()
    nxt.save(update_fields=["holds_target", "heartbeat_at"])
    transaction.on_commit(lambda: _enqueue(nxt.pk, nxt.task_id))
    return nxt


# --- what the apps above the engine check before a deployment of a change starts ----

# Checks registered by the apps above the engine (the approval workflow registers one in
# its AppConfig.ready): ``check(deployment=...) -> str``, called inside the transaction
# holding the deployment's row lock; "" lets it start, any other answer is the reason it
# must not. A check may change its own records in that transaction (reopen gates, audit
# why); an exception rolls the whole start back and the sweep tries again.
_START_CHECKS: list = []


def register_start_check(check) -> None:
    """Have ``check`` asked before every queued deployment of a change starts: when it is
    given the target after waiting in the queue (``_advance_queue``) and when a worker
    claims it (``claim_run``). The engine imports nothing above it; the apps that know
    what a start needs register here."""
    if check not in _START_CHECKS:
        _START_CHECKS.append(check)


def _start_refusal(deployment: Deployment) -> str:
    """Why ``deployment`` must not start ("" when it may); under its row lock."""
    if not deployment.change_id or deployment.kind != Deployment.Kind.DEPLOY:
        return ""
    for check in _START_CHECKS:
        reason = check(deployment=deployment)
        if reason:
            return str(reason)
    return ""


def _cancel_refused_start(deployment: Deployment, reason: str) -> None:
    """Under the deployment's row lock: it never starts. Cancelled with the reason, in its
    log and in the audit trail; the next one of the queue starts after commit."""
    last = DeploymentLogLine.objects.filter(deployment=deployment).aggregate(
        m=Max("seq"))["m"]
    DeploymentLogLine.objects.create(deployment=deployment, seq=(last or 0) + 1,
                                     level="error", message=f"Not started: {reason}")
    deployment.holds_target = False
    deployment.save(update_fields=["holds_target"])
    deployment_finish(deployment=deployment, status=Deployment.Status.CANCELLED,
                      reason=f"not started: {reason}",
                      actor=System(f"start check of deployment #{deployment.pk}"))


# The task that runs a deployment, by name: the tasks module imports the services, so
# the services name the task rather than import it (core.dispatch).
EXECUTE_TASK = "deployments.tasks.deployment_execute"


def _enqueue(deployment_id: int, task_id: str) -> bool:
    """Hand the deployment to the workers of its environment's queue; False when Redis
    cannot be reached.

    The deployment row is committed before this runs, so a refused publish loses
    nothing: the sweep (deployments_resume_stale) queues it again once Redis is back.
    """
    slug = (Deployment.objects.filter(pk=deployment_id)
            .values_list("environment__slug", flat=True).first())
    queue = deploy_queue(slug or "")
    if dispatch.mode() != "celery":
        # Kept back or run here and now (core.dispatch): there is no broker to miss.
        dispatch.enqueue(EXECUTE_TASK, deployment_id, task_id=task_id, queue=queue)
        return True
    try:
        dispatch.enqueue(EXECUTE_TASK, deployment_id, task_id=task_id, queue=queue)
    except Exception as exc:  # noqa: BLE001 - kombu's connection errors vary by transport
        logger.warning("deployment %s is queued but its task could not reach the broker "
                       "(%s); it is sent again once the broker is back",
                       deployment_id, exc.__class__.__name__)
        return False
    return True


def deployment_finish(*, deployment: Deployment, status: str, reason: str = "",
                      actor=None) -> None:
    """End ``deployment`` with the final ``status`` and ``reason``, as its worker does.

    Call it inside a transaction holding the deployment's row lock (``select_for_update``
    with its environment). It records the end (``deployment.<status>``, by ``actor`` or
    the worker), tells the listeners (``_announce_end``) and, once the transaction
    commits, starts the next deployment waiting in the queue.
    """
    before = deployment.status
    deployment.status = status
    deployment.finished_at = deployment.finished_at or clock.now()
    deployment.failure_reason = reason
    if status == Deployment.Status.SUCCEEDED:
        deployment.progress = 100
    deployment.save(update_fields=["status", "finished_at", "failure_reason", "progress"])
    audit_record(
        actor=actor or System(f"worker running deployment #{deployment.pk}"),
        action=f"deployment.{status}", obj=deployment, environment=deployment.environment.slug,
        before={"status": before}, after={"status": status, "kind": deployment.kind},
        reason=reason,
    )
    _announce_end(deployment, status)


def _announce_end(deployment: Deployment, status: str, *, advance: bool = True) -> None:
    """Inside the transaction that made ``deployment`` final.

    ``deployment_ending`` listeners (the change that released it is closed, the
    notifications outbox is written) run now, each failure confined to its savepoint so
    the deployment's end always commits; ``deployment_finished`` listeners (the audit
    checkpoint) run after commit, one failing listener never keeping the others from
    theirs. The next queued deployment of the
    application there starts (``advance``) once this transaction commits.
    """
    try:
        with transaction.atomic():
            for _receiver, result in deployment_ending.send_robust(
                    sender=Deployment, deployment=deployment, status=status):
                if isinstance(result, Exception):
                    raise result
    except Exception:
        logger.exception("a listener failed on the end of deployment %s; the beat task "
                         "closes what it left open", deployment.pk)
    if advance:
        _advance_after_commit(deployment.application_id, deployment.environment_id)

    def finished() -> None:
        for receiver, result in deployment_finished.send_robust(
                sender=Deployment, deployment=deployment, status=status):
            if isinstance(result, Exception):
                logger.error("deployment_finished listener %r failed for deployment %s: %r",
                             receiver, deployment.pk, result, exc_info=result)

    transaction.on_commit(finished)
