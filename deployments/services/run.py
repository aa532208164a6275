"""The run of a deployment on a worker: the run lock that tells a live run from a dead
one, the claim (queued -> running), each step claimed before its side effect, and the
run's end.

``run_is_live`` and ``claim_run`` are looked up on this module when the sweep and the
run call them, so a test can stand between a sweep's read and a worker's claim."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max
from django.utils.module_loading import import_string

from audit.trail import System, audit_record
from core import clock
from core.errors import DomainError
from deployments import inputs as deployment_inputs
from deployments.executors import StepFailed, executor_for
from deployments.models import Deployment, DeploymentLogLine, DeploymentStep
from deployments.services.analysis import _analyse, _record_baseline
from deployments.services.queue import _cancel_refused_start, _start_refusal, deployment_finish
from deployments.services.rollback import _roll_back_automatically

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
MAX_ATTEMPTS = 8
# A step interrupted this many times (its worker died mid-step each time) is not
# tried again: the deployment fails and says so.
STEP_MAX_ATTEMPTS = 3
# Class of the PostgreSQL advisory locks a run holds on its deployment, (class, id).
# The lock lives as long as the worker's database session: a worker that dies
# releases it at once, so a new run can tell a dead run from a live one.
RUN_LOCK_CLASS = 7302
# Steps whose failure means the new version is unhealthy on a target (SOP 8.1
# "health check failing"): they roll back automatically like a failed analysis.
HEALTH_STEPS = {"start", "health_check", "health_check_idle", "switch"}


# What replaces a resolved secret value in log lines, step details and reasons.
SECRET_MASK = "***"
# Values shorter than this are not masked: they would blank out ordinary words.
SECRET_MASK_MIN_LENGTH = 3


@dataclass
class RunState:
    """Per-run state of one execution; never kept on the task instance."""

    deployment_id: int
    next_seq: int = 1
    lines: list = field(default_factory=list)
    # The resolved secret values of this run (memory only), masked wherever text is kept.
    secrets: set = field(default_factory=set, repr=False)

    def mask(self, text: str) -> str:
        """``text`` with every resolved secret value of the run replaced by ***, as CI
        systems mask theirs; each line of a multi-line value is masked on its own too,
        since command output arrives line by line."""
        if not self.secrets or not text:
            return text
        pieces = set()
        for value in self.secrets:
            pieces.add(value)
            pieces.update(part.strip() for part in value.splitlines())
        for piece in sorted((p for p in pieces if len(p) >= SECRET_MASK_MIN_LENGTH),
                            key=len, reverse=True):
            text = text.replace(piece, SECRET_MASK)
        return text


def _log(state: RunState, level: str, message: str) -> None:
    DeploymentLogLine.objects.create(
        deployment_id=state.deployment_id, seq=state.next_seq, level=level,
        message=state.mask(message)
    )
    state.next_seq += 1


# --- run liveness: a session advisory lock per deployment ---------------------


def _try_run_lock(deployment_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_LOCK_CLASS, deployment_id])
        return bool(cursor.fetchone()[0])


def _run_unlock(deployment_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_LOCK_CLASS, deployment_id])


def run_is_live(deployment_id: int) -> bool:
    """True while a worker that is alive runs this deployment."""
    if not _try_run_lock(deployment_id):
        return True
    _run_unlock(deployment_id)
    return False


def claim_run(deployment_id: int) -> Deployment | None:
    """Move queued -> running, or pick up a running deployment whose run died.

    The run calls it holding the deployment's run lock; None means nothing is to run
    (final, waiting its turn, refused at the start, or given up)."""
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("application", "environment", "release__application")
            .filter(pk=deployment_id)
            .first()
        )
        if deployment is None or deployment.is_final:
            return None
        if deployment.status == Deployment.Status.QUEUED and not deployment.holds_target:
            return None  # waiting its turn in the queue; it is sent again when it comes
        if deployment.status == Deployment.Status.QUEUED:
            # Facts may have arrived since it was made (a worker for its environment
            # was away, say): what a start needs is asked again before the first step.
            refusal = _start_refusal(deployment)
            if refusal:
                _cancel_refused_start(deployment, refusal)
                return None
        if deployment.status == Deployment.Status.STOPPING:
            # Cancelled while a step ran, and that run is gone: nothing runs any more.
            deployment_finish(deployment=deployment, status=Deployment.Status.CANCELLED,
                              reason=deployment.failure_reason or "cancelled")
            return None
        if deployment.attempts >= MAX_ATTEMPTS:
            deployment_finish(deployment=deployment, status=Deployment.Status.FAILED,
                              reason=f"gave up after {deployment.attempts} attempts")
            return None
        before = deployment.status
        deployment.attempts += 1
        deployment.heartbeat_at = clock.now()
        if deployment.status == Deployment.Status.QUEUED:
            deployment.status = Deployment.Status.RUNNING
            deployment.started_at = clock.now()
        deployment.save(update_fields=["attempts", "heartbeat_at", "status", "started_at"])
        audit_record(
            actor=System(f"worker running deployment #{deployment.pk}"),
            action="deployment.started" if before == "queued" else "deployment.resumed",
            obj=deployment, environment=deployment.environment.slug,
            before={"status": before}, after={"status": deployment.status,
                                               "attempt": deployment.attempts},
        )
        return deployment


def deployment_run(*, deployment_id: int) -> str | None:
    """Execute a deployment's remaining steps. Safe to call twice for the same deployment.

    A run holds a session advisory lock on its deployment: a redelivered message
    while the first run lives does nothing, and a run whose worker died is picked
    up by the next one. Each step is claimed in the database (committed) before its
    side effect; a step interrupted mid-way is run again (executor steps are
    idempotent) at most STEP_MAX_ATTEMPTS times.
    """
    if not _try_run_lock(deployment_id):
        return None  # a live run holds this deployment
    try:
        return _run_locked(deployment_id)
    finally:
        _run_unlock(deployment_id)


def _configuration_for(deployment: Deployment, secrets: set | None = None) -> dict:
    """The deployment's configuration with its secret references resolved (SOP 7).

    Resolved here, on the worker, for this run only: the values live in memory and
    reach the deployed process through its environment; they are never saved or logged.
    The engine does not know where configuration comes from: the callable named by
    ``PORTAL_CONFIGURATION_PROVIDER`` (``deployment, secrets=set -> dict``) does; with
    none, deployments run without configuration.
    """
    provider = configuration_provider()
    if provider is None:
        return {}
    return provider(deployment, secrets=secrets)


def configuration_provider():
    path = getattr(settings, "PORTAL_CONFIGURATION_PROVIDER", "")
    return import_string(path) if path else None


# What _run_step returns when the run goes on to the next step.
_NEXT_STEP = object()


def _run_locked(deployment_id: int) -> str | None:
    """Run a claimed deployment's remaining steps in order; the outcome, or None when
    another run holds it."""
    deployment = claim_run(deployment_id)
    if deployment is None:
        return None
    last = DeploymentLogLine.objects.filter(deployment=deployment).aggregate(m=Max("seq"))["m"]
    state = RunState(deployment_id=deployment.pk, next_seq=(last or 0) + 1)

    def log(level: str, message: str) -> None:
        _log(state, level, message)

    _wait_for_rolled_back_run(deployment, log)
    try:
        executor = executor_for(deployment, log)
        executor.secrets = state.secrets
        executor.configuration = _configuration_for(deployment, state.secrets)
    except (StepFailed, DomainError) as exc:
        first = deployment.steps.order_by("position").first()
        reason = getattr(exc, "detail", None) or str(exc)
        log("error", f"Configuration not handed to the deployment: {reason}")
        return _fail(deployment, first, state.mask(reason))
    steps = list(deployment.steps.select_related("target").order_by("position"))
    deployment_inputs.pin_targets(deployment, steps)
    _log_start(deployment, log)
    try:
        for step in steps:
            if step.status in (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED):
                continue
            outcome = _run_step(deployment, step, steps, executor, state, log)
            if outcome is not _NEXT_STEP:
                return outcome
        return _end_run(deployment, log)
    finally:
        executor.close()  # what it kept open for the run (the ssh executor's sessions)


def _wait_for_rolled_back_run(deployment: Deployment, log) -> None:
    """A rollback of a deployment that was still running waits for its running step.

    It is queued behind that step, so two runs never act on the same targets at once.
    The run sees its final status before its next step and lets go; a run whose worker
    dies lets go at once, and the task time limit bounds a step that hangs.
    """
    if not (deployment.rolled_back_deployment_id
            and run_is_live(deployment.rolled_back_deployment_id)):
        return
    log("info", f"Waiting for the running step of deployment "
                f"#{deployment.rolled_back_deployment_id} to end")
    beat = time.monotonic()
    while run_is_live(deployment.rolled_back_deployment_id):
        if time.monotonic() - beat > 10:
            Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=clock.now())
            beat = time.monotonic()
        time.sleep(0.2)


def _log_start(deployment: Deployment, log) -> None:
    if deployment.attempts == 1:
        what = "rollback" if deployment.kind == Deployment.Kind.ROLLBACK else "deployment"
        log("info", f"Starting {what} of {deployment.release} to {deployment.environment.name}"
                    f" ({deployment.strategy.replace('_', ' ')}"
                    f"{', dry run' if deployment.dry_run else ''})")
    else:
        log("warning", f"Resuming after the previous run stopped (attempt {deployment.attempts})")


def _resumable(deployment: Deployment, step: DeploymentStep, executor, log):
    """Whether the run may (re)claim ``step``: None if so, else the run's outcome."""
    stopped = _stopped(deployment.pk)
    if stopped:
        log("warning", f"{stopped.capitalize().replace('_', ' ')}: no further steps run")
        return stopped
    if step.status == DeploymentStep.Status.FAILED:
        return _fail(deployment, step, step.detail or f"step '{step.title}' failed")
    if step.status == DeploymentStep.Status.RUNNING:
        # Claimed by a run whose worker died mid-step (we hold the run lock, so
        # that run is gone). Run it again only if its executor says the step is
        # safe to repeat; otherwise on-call decides (retry, roll back, mark done).
        if not executor.safe_to_repeat(step.name):
            return _needs_attention(
                deployment, step,
                f"step '{step.title}' was interrupted and is not safe to repeat; "
                "check the target, then retry it, mark it done or roll back", log)
        if step.attempts >= STEP_MAX_ATTEMPTS:
            return _fail(deployment, step,
                         f"step '{step.title}' was interrupted {step.attempts} times; "
                         "check the target before deploying again")
        log("warning", f"{step.title}: interrupted by a stopped worker, running it again "
                       f"(attempt {step.attempts + 1} of {STEP_MAX_ATTEMPTS})")
    return None


def _run_step(deployment: Deployment, step: DeploymentStep, steps: list, executor,
              state: RunState, log):
    """Claim ``step`` (committed before its side effect), run it and record it.

    Returns ``_NEXT_STEP`` when the run goes on, else the run's outcome (None: another
    run holds the step)."""
    refused = _resumable(deployment, step, executor, log)
    if refused is not None:
        return refused
    claimed = DeploymentStep.objects.filter(
        pk=step.pk, status=step.status, attempts=step.attempts
    ).update(status=DeploymentStep.Status.RUNNING, started_at=clock.now(),
             attempts=F("attempts") + 1)
    if claimed != 1:
        return None  # another run holds this step
    step.attempts += 1
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=clock.now())
    log("info", f"{step.title}...")
    try:
        if step.name == "analysis":
            outcome = _analyse(deployment, step, steps, executor, log)
            if outcome is not None:
                return outcome
            detail = step.detail
        else:
            detail = state.mask(executor.run(step))
            if step.name == "pre_health_check":
                _record_baseline(deployment, step, executor, log)
    except StepFailed as exc:
        said = state.mask(str(exc))
        log("error", f"{step.title} failed: {said}")
        if step.name in HEALTH_STEPS and deployment.kind == Deployment.Kind.DEPLOY \
                and not Deployment.objects.filter(pk=deployment.pk,
                                                  status=Deployment.Status.STOPPING).exists():
            return _roll_back_automatically(
                deployment, step, f"health check failing: {said}", log)
        return _fail(deployment, step, said)
    except Exception as exc:  # an executor bug must still end the deployment cleanly
        said = state.mask(f"{exc.__class__.__name__}: {exc}")
        # The traceback may quote a secret: only a run without secrets logs it.
        logger.error("step %s of deployment %s crashed: %s", step.name, deployment.pk,
                     said, exc_info=not state.secrets)
        log("error", f"{step.title} failed: {said}")
        return _fail(deployment, step, said)
    log("info", f"{step.title}: {detail}")
    DeploymentStep.objects.filter(pk=step.pk).update(
        status=DeploymentStep.Status.SUCCEEDED, finished_at=clock.now(), detail=detail
    )
    step.status = DeploymentStep.Status.SUCCEEDED
    Deployment.objects.filter(pk=deployment.pk).update(
        progress=int(step.position * 100 / len(steps)), heartbeat_at=clock.now()
    )
    return _NEXT_STEP


def _end_run(deployment: Deployment, log) -> str:
    """Every step done: the deployment succeeded, unless it was cancelled meanwhile."""
    with transaction.atomic():
        deployment = (Deployment.objects.select_for_update(of=("self",))
                      .select_related("environment").get(pk=deployment.pk))
        if deployment.is_final:
            return deployment.status
        if deployment.status == Deployment.Status.STOPPING:
            log("warning", "Cancelled after its last step")
            deployment_finish(deployment=deployment, status=Deployment.Status.CANCELLED,
                              reason=deployment.failure_reason or "cancelled",
                              actor=System(f"worker stopping deployment #{deployment.pk}"))
            return Deployment.Status.CANCELLED
        what = "Rollback" if deployment.kind == Deployment.Kind.ROLLBACK else "Deployment"
        log("info", f"{what} succeeded")
        deployment_finish(deployment=deployment, status=Deployment.Status.SUCCEEDED)
    return Deployment.Status.SUCCEEDED


def _needs_attention(deployment: Deployment, step: DeploymentStep, reason: str, log) -> str:
    """Stop the run at an interrupted step whose effect is unknown: on-call decides."""
    with transaction.atomic():
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        if locked.is_final:
            return locked.status
        log("error", f"Needs attention: {reason}")
        before = locked.status
        locked.status = Deployment.Status.NEEDS_ATTENTION
        locked.failure_reason = reason
        locked.save(update_fields=["status", "failure_reason"])
        audit_record(actor=System(f"worker running deployment #{locked.pk}"),
                     action="deployment.needs_attention", obj=locked,
                     environment=locked.environment.slug, before={"status": before},
                     after={"status": locked.status, "step": step.name,
                            "step_position": step.position}, reason=reason)
    return Deployment.Status.NEEDS_ATTENTION


def _stopped(deployment_id: int) -> str | None:
    """The final status someone gave the deployment while it ran (rollback), or
    ``cancelled`` once a deployment being stopped is between steps."""
    status = Deployment.objects.filter(pk=deployment_id).values_list("status", flat=True).first()
    if status == Deployment.Status.STOPPING:
        with transaction.atomic():
            locked = (Deployment.objects.select_for_update(of=("self",))
                      .select_related("environment").get(pk=deployment_id))
            if locked.status == Deployment.Status.STOPPING:
                deployment_finish(deployment=locked, status=Deployment.Status.CANCELLED,
                                  reason=locked.failure_reason or "cancelled",
                                  actor=System(f"worker stopping deployment #{locked.pk}"))
            status = locked.status
    return status if status in Deployment.FINAL else None


def _fail(deployment: Deployment, step: DeploymentStep | None, reason: str) -> str:
    with transaction.atomic():
        if step is not None:
            DeploymentStep.objects.filter(pk=step.pk).update(
                status=DeploymentStep.Status.FAILED, finished_at=clock.now(), detail=reason
            )
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        if locked.status == Deployment.Status.STOPPING:
            # Cancelled while the step ran, and the step ended for it (an executor that
            # ends a remote command when its deployment is being stopped): cancelled.
            deployment_finish(deployment=locked, status=Deployment.Status.CANCELLED,
                              reason=locked.failure_reason or "cancelled",
                              actor=System(f"worker stopping deployment #{locked.pk}"))
            return Deployment.Status.CANCELLED
        if not locked.is_final:
            deployment_finish(deployment=locked, status=Deployment.Status.FAILED, reason=reason)
    return Deployment.Status.FAILED
