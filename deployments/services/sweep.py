"""The beat's sweep: runs whose worker died, queues whose head was lost, and queued
deployments whose message never reached the workers are picked up again."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from audit.trail import System, audit_record
from core import clock, logcontext
from deployments.models import Deployment
from deployments.services import run
from deployments.services.queue import HOLDING, _advance_queue, _enqueue, deployment_finish

logger = logging.getLogger(__name__)


def deployments_resume_stale(*, on_worker_start: bool = False) -> int:
    """Find deployments whose run died or whose task never started; queue them again.

    - Running ones whose run lock is free (their worker died, or their run stopped
      on an error such as a database outage) and whose heartbeat is older than
      PORTAL_HEARTBEAT_STALE_SECONDS (at once when a worker has just started).
      A run that holds its advisory lock is alive (a long step) and left alone.
      Once their attempts are used up they fail with the reason.
    - Queued ones whose task has not started after PORTAL_REQUEUE_AFTER_SECONDS:
      the message never reached Redis (it was down when the deployment was
      requested) or Redis lost it. They are sent again, and again every
      PORTAL_REQUEUE_AFTER_SECONDS while they wait.

    Sending twice is harmless: a run takes the run lock, claims the deployment under
    its row lock and each step with a conditional update, so a second message for
    the same deployment finds nothing to do.
    """
    now = clock.now()
    cutoff = now - timedelta(
        seconds=0 if on_worker_start else settings.PORTAL_HEARTBEAT_STALE_SECONDS)
    detector = System("stale deployment detector")
    handled = 0
    stale_ids = list(
        Deployment.objects.filter(status__in=(Deployment.Status.RUNNING,
                                              Deployment.Status.STOPPING),
                                  heartbeat_at__lt=cutoff)
        .values_list("pk", flat=True)
    )
    for pk in stale_ids:
        with logcontext.bind(deployment_id=pk):
            if run.run_is_live(pk):
                continue
            with transaction.atomic():
                # The read above is only a list of candidates: a worker may have claimed the
                # deployment since (fresh heartbeat, run lock held). The whole condition is
                # checked again under the row lock, which a worker's claim also takes, so a
                # live run is never failed, cancelled or requeued under its worker's feet.
                deployment = Deployment.objects.select_for_update(skip_locked=True).filter(
                    pk=pk, status__in=(Deployment.Status.RUNNING, Deployment.Status.STOPPING),
                    heartbeat_at__lt=cutoff,
                ).select_related("environment").first()
                # A worker takes the run lock before the row lock: one that holds the run lock
                # now waits for this row lock, or is inside its run.
                if deployment is None or run.run_is_live(pk):
                    continue
                if deployment.status == Deployment.Status.STOPPING:
                    # Its worker died while it was being stopped: nothing runs, it is cancelled.
                    deployment_finish(deployment=deployment, status=Deployment.Status.CANCELLED,
                                      reason=deployment.failure_reason or "cancelled",
                                      actor=System("stale deployment detector"))
                elif deployment.attempts >= run.MAX_ATTEMPTS:
                    deployment_finish(
                        deployment=deployment, status=Deployment.Status.FAILED,
                        reason="the worker stopped responding and attempts are exhausted",
                        actor=detector)
                else:
                    deployment.heartbeat_at = clock.now()
                    deployment.save(update_fields=["heartbeat_at"])
                    audit_record(actor=detector, action="deployment.requeued", obj=deployment,
                                 environment=deployment.environment.slug,
                                 reason="its run stopped (worker or database gone)")
                    logger.info("deployment %s: its run stopped; queued again", pk)
                    transaction.on_commit(
                        lambda d=deployment: _enqueue(d.pk, uuid.uuid4().hex))
                handled += 1

    # A queue whose head was lost (it ended without starting the next one): the next
    # one starts now.
    for app_id, env_id in _queues_without_head():
        with transaction.atomic():
            if _advance_queue(application_id=app_id, environment_id=env_id) is not None:
                handled += 1

    waiting = now - timedelta(seconds=settings.PORTAL_REQUEUE_AFTER_SECONDS)
    queued = list(
        Deployment.objects.filter(status=Deployment.Status.QUEUED, holds_target=True,
                                  created_at__lt=waiting)
        .filter(_resent_before(waiting)).values_list("pk", "heartbeat_at")
    )
    for pk, last_sent in queued:
        with logcontext.bind(deployment_id=pk):
            if run.run_is_live(pk):
                continue
            if not _enqueue(pk, uuid.uuid4().hex):
                break  # the broker is still away; the next sweep tries again
            with transaction.atomic():
                deployment = Deployment.objects.select_for_update(skip_locked=True).filter(
                    pk=pk, status=Deployment.Status.QUEUED).select_related("environment").first()
                if deployment is None:
                    continue
                deployment.heartbeat_at = clock.now()
                deployment.save(update_fields=["heartbeat_at"])
                logger.info("deployment %s: its task had not started; sent again", pk)
                if last_sent is None:  # on the record once, not at every resend
                    audit_record(actor=detector, action="deployment.requeued", obj=deployment,
                                 environment=deployment.environment.slug,
                                 reason="its task had not started; sent to the workers again")
            handled += 1
    return handled


def _queues_without_head() -> list[tuple[int, int]]:
    """(application, environment) pairs with deployments waiting and none holding."""
    from django.db.models import Exists, OuterRef

    holding = Deployment.objects.filter(application_id=OuterRef("application_id"),
                                        environment_id=OuterRef("environment_id"),
                                        holds_target=True, status__in=HOLDING)
    return list(Deployment.objects.filter(status=Deployment.Status.QUEUED, holds_target=False)
                .filter(~Exists(holding))
                .values_list("application_id", "environment_id").distinct())


def _resent_before(before: datetime):
    """Queued deployments never re-sent, or re-sent before ``before``."""
    from django.db.models import Q

    return Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=before)
