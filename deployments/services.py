"""State changes of the catalogue and of executions.

Each is one transaction with its audit event.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from deployments.executors import StepFailed, executor_for
from deployments.models import (
    Application,
    Deployment,
    DeploymentLogLine,
    DeploymentStep,
    Environment,
    Release,
)
from deployments.signals import deployment_finished
from portal.audit import System, audit_record
from portal.errors import Conflict, DeploymentInProgress, InvalidTransition

logger = logging.getLogger(__name__)

# SOP 4.1 phase 2: the deployment steps, in order.
SOP_STEPS: list[tuple[str, str]] = [
    ("pre_health_check", "Pre-deployment health check"),
    ("stop", "Stop application services"),
    ("backup", "Back up current version"),
    ("deploy", "Deploy new version"),
    ("migrate", "Run database migrations"),
    ("start", "Start application services"),
    ("health_check", "Post-deployment health check"),
]

# A deployment whose task keeps failing is given up after this many starts.
MAX_ATTEMPTS = 3

RELEASE_FIELDS = ("artifact_url", "artifact_sha256", "commit_sha", "committed_at", "notes")


def _release_snapshot(release: Release) -> dict:
    return {
        "application": release.application.slug,
        "version": release.version,
        **{name: getattr(release, name) for name in RELEASE_FIELDS},
    }


def release_register(
    *,
    actor,
    application: Application,
    version: str,
    artifact_url: str = "",
    artifact_sha256: str = "",
    commit_sha: str = "",
    committed_at: datetime | None = None,
    notes: str = "",
) -> tuple[Release, bool]:
    """Register a release; the same body again returns the existing one (created False).

    Releases are immutable: the same version with different content is a conflict.
    """
    wanted = {
        "artifact_url": artifact_url,
        "artifact_sha256": artifact_sha256.lower(),
        "commit_sha": commit_sha,
        "committed_at": committed_at,
        "notes": notes,
    }
    existing = Release.objects.filter(application=application, version=version).first()
    if existing is None:
        try:
            with transaction.atomic():
                release = Release.objects.create(
                    application=application, version=version, created_by=actor, **wanted
                )
                audit_record(actor=actor, action="release.registered", obj=release,
                             after=_release_snapshot(release))
            return release, True
        except IntegrityError:
            # Registered by a concurrent request between our read and insert.
            existing = Release.objects.get(application=application, version=version)
    if any(getattr(existing, k) != v for k, v in wanted.items()):
        raise Conflict(
            f"{application.slug} {version} is already registered with different content; "
            "releases are immutable, register a new version",
            code="release_exists",
        )
    return existing, False


def deployment_create(
    *,
    actor,
    release: Release,
    environment: Environment,
    strategy: str = "all_at_once",
    change_id: int | None = None,
) -> Deployment:
    """Create a queued deployment with its steps and queue its run after commit.

    Must be called inside the caller's transaction (the change that releases it).
    """
    application = release.application
    if Deployment.objects.filter(
        application=application, environment=environment, status__in=Deployment.ACTIVE
    ).exists():
        raise DeploymentInProgress(
            f"another deployment of {application.slug} to {environment.slug} is in progress"
        )
    task_id = uuid.uuid4().hex
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                application=application, environment=environment, release=release,
                strategy=strategy, change_id=change_id, started_by=actor, task_id=task_id,
            )
    except IntegrityError:
        # deployment_one_active_per_app_env: a second deploy press lost the race.
        raise DeploymentInProgress(
            f"another deployment of {application.slug} to {environment.slug} is in progress"
        ) from None
    DeploymentStep.objects.bulk_create(
        DeploymentStep(deployment=deployment, position=i, name=name, title=title)
        for i, (name, title) in enumerate(SOP_STEPS, start=1)
    )
    audit_record(
        actor=actor, action="deployment.queued", obj=deployment, environment=environment.slug,
        after={"release": release.version, "strategy": strategy, "change": change_id},
    )
    transaction.on_commit(lambda: _enqueue(deployment.pk, task_id))
    return deployment


def _enqueue(deployment_id: int, task_id: str) -> None:
    from deployments.tasks import deployment_execute

    deployment_execute.apply_async(args=[deployment_id], task_id=task_id)


@dataclass
class RunState:
    """Per-run state of one execution; never kept on the task instance."""

    deployment_id: int
    next_seq: int = 1
    lines: list = field(default_factory=list)


def _log(state: RunState, level: str, message: str) -> None:
    DeploymentLogLine.objects.create(
        deployment_id=state.deployment_id, seq=state.next_seq, level=level, message=message
    )
    state.next_seq += 1


def _claim_run(deployment_id: int) -> Deployment | None:
    """Move queued -> running, or pick up our own running deployment; None if final."""
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update()
            .select_related("application", "environment", "release__application")
            .filter(pk=deployment_id)
            .first()
        )
        if deployment is None or deployment.is_final:
            return None
        if deployment.attempts >= MAX_ATTEMPTS:
            _finish(deployment, Deployment.Status.FAILED,
                    f"gave up after {deployment.attempts} attempts")
            return None
        before = deployment.status
        deployment.attempts += 1
        deployment.heartbeat_at = timezone.now()
        if deployment.status == Deployment.Status.QUEUED:
            deployment.status = Deployment.Status.RUNNING
            deployment.started_at = timezone.now()
        deployment.save(update_fields=["attempts", "heartbeat_at", "status", "started_at"])
        audit_record(
            actor=System(f"worker running deployment #{deployment.pk}"),
            action="deployment.started" if before == "queued" else "deployment.resumed",
            obj=deployment, environment=deployment.environment.slug,
            before={"status": before}, after={"status": deployment.status,
                                               "attempt": deployment.attempts},
        )
        return deployment


def _finish(deployment: Deployment, status: str, reason: str = "") -> None:
    """Inside a transaction holding the deployment's row lock."""
    before = deployment.status
    deployment.status = status
    deployment.finished_at = timezone.now()
    deployment.failure_reason = reason
    if status == Deployment.Status.SUCCEEDED:
        deployment.progress = 100
    deployment.save(update_fields=["status", "finished_at", "failure_reason", "progress"])
    audit_record(
        actor=System(f"worker running deployment #{deployment.pk}"),
        action=f"deployment.{status}", obj=deployment, environment=deployment.environment.slug,
        before={"status": before}, after={"status": status}, reason=reason,
    )
    transaction.on_commit(
        lambda: deployment_finished.send(sender=Deployment, deployment=deployment, status=status)
    )


def deployment_run(*, deployment_id: int) -> str | None:
    """Execute a deployment's remaining steps. Safe to call twice for the same deployment.

    Each step is claimed in the database (committed) before its side effect, so a
    redelivered message never runs a claimed step again.
    """
    deployment = _claim_run(deployment_id)
    if deployment is None:
        return None
    last = DeploymentLogLine.objects.filter(deployment=deployment).aggregate(m=Max("seq"))["m"]
    state = RunState(deployment_id=deployment.pk, next_seq=(last or 0) + 1)

    def log(level: str, message: str) -> None:
        _log(state, level, message)

    executor = executor_for(deployment, log)
    steps = list(deployment.steps.order_by("position"))
    total = len(steps)
    log("info", f"Starting deployment of {deployment.release} to {deployment.environment.name}")

    for step in steps:
        if step.status in (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED):
            continue
        if step.status != DeploymentStep.Status.PENDING:
            # Claimed by an earlier run that died mid-step: its side effect may be
            # half done, so the step is not run a second time.
            return _fail(deployment, step, f"step '{step.title}' was interrupted; "
                                           "check the target before deploying again")
        if _cancel_requested(deployment.pk):
            log("warning", "Cancelled: no further steps run")
            return Deployment.Status.CANCELLED
        claimed = DeploymentStep.objects.filter(
            pk=step.pk, status=DeploymentStep.Status.PENDING
        ).update(status=DeploymentStep.Status.RUNNING, started_at=timezone.now())
        if claimed != 1:
            return None  # another run holds this step
        Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=timezone.now())
        log("info", f"{step.title}...")
        try:
            detail = executor.run_step(step.name)
        except StepFailed as exc:
            log("error", f"{step.title} failed: {exc}")
            return _fail(deployment, step, str(exc))
        except Exception as exc:  # an executor bug must still end the deployment cleanly
            logger.exception("step %s of deployment %s crashed", step.name, deployment.pk)
            log("error", f"{step.title} failed: {exc.__class__.__name__}: {exc}")
            return _fail(deployment, step, f"{exc.__class__.__name__}: {exc}")
        log("info", f"{step.title}: {detail}")
        done = step.position
        DeploymentStep.objects.filter(pk=step.pk).update(
            status=DeploymentStep.Status.SUCCEEDED, finished_at=timezone.now(), detail=detail
        )
        Deployment.objects.filter(pk=deployment.pk).update(
            progress=int(done * 100 / total), heartbeat_at=timezone.now()
        )

    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk
        )
        if deployment.is_final:
            return deployment.status
        log("info", "Deployment succeeded")
        _finish(deployment, Deployment.Status.SUCCEEDED)
    return Deployment.Status.SUCCEEDED


def _cancel_requested(deployment_id: int) -> bool:
    return Deployment.objects.filter(pk=deployment_id, status=Deployment.Status.CANCELLED).exists()


def _fail(deployment: Deployment, step: DeploymentStep, reason: str) -> str:
    with transaction.atomic():
        DeploymentStep.objects.filter(pk=step.pk).update(
            status=DeploymentStep.Status.FAILED, finished_at=timezone.now(), detail=reason
        )
        locked = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk
        )
        if not locked.is_final:
            _finish(locked, Deployment.Status.FAILED, reason)
    return Deployment.Status.FAILED


def deployment_cancel(*, actor, deployment: Deployment, reason: str = "") -> Deployment:
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk
        )
        if locked.is_final:
            raise InvalidTransition(f"deployment #{locked.pk} has already {locked.status}")
        before = locked.status
        locked.status = Deployment.Status.CANCELLED
        locked.finished_at = timezone.now()
        locked.failure_reason = reason or "cancelled"
        locked.save(update_fields=["status", "finished_at", "failure_reason"])
        audit_record(actor=actor, action="deployment.cancelled", obj=locked,
                     environment=locked.environment.slug, before={"status": before},
                     after={"status": locked.status}, reason=reason)
        transaction.on_commit(lambda: deployment_finished.send(
            sender=Deployment, deployment=locked, status=locked.status))
    return locked


def deployments_resume_stale() -> int:
    """Find running deployments whose worker stopped sending heartbeats; re-queue or fail them."""
    cutoff = timezone.now() - timedelta(seconds=settings.PORTAL_HEARTBEAT_STALE_SECONDS)
    handled = 0
    stale_ids = list(
        Deployment.objects.filter(status=Deployment.Status.RUNNING, heartbeat_at__lt=cutoff)
        .values_list("pk", flat=True)
    )
    for pk in stale_ids:
        with transaction.atomic():
            deployment = Deployment.objects.select_for_update(skip_locked=True).filter(
                pk=pk, status=Deployment.Status.RUNNING, heartbeat_at__lt=cutoff
            ).select_related("environment").first()
            if deployment is None:
                continue
            if deployment.attempts >= MAX_ATTEMPTS:
                _finish(deployment, Deployment.Status.FAILED,
                        "the worker stopped responding and attempts are exhausted")
            else:
                deployment.heartbeat_at = timezone.now()
                deployment.save(update_fields=["heartbeat_at"])
                audit_record(actor=System("stale deployment detector"),
                             action="deployment.requeued", obj=deployment,
                             environment=deployment.environment.slug,
                             reason="heartbeat went stale")
                transaction.on_commit(
                    lambda d=deployment: _enqueue(d.pk, uuid.uuid4().hex))
            handled += 1
    return handled
