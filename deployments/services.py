"""State changes of the catalogue and of executions.

Each is one transaction with its audit event.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.trail import System, audit_record
from catalog.models import Application, Environment, MigrationKind, Release
from catalog.permissions import environment_permissions, has_env_perm
from core import outbound
from core.errors import (
    Conflict,
    DomainError,
    Invalid,
    InvalidTransition,
    Refused,
)
from deployments import health
from deployments import inputs as deployment_inputs
from deployments.executors import StepFailed, executor_for
from deployments.models import AnalysisVerdict, Deployment, DeploymentLogLine, DeploymentStep
from deployments.signals import deployment_ending, deployment_finished
from deployments.strategies import STRATEGIES, build_plan
from identity import assurance

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

RELEASE_FIELDS = ("artifact_url", "artifact_sha256", "commit_sha", "committed_at", "notes")


def _release_snapshot(release: Release) -> dict:
    return {
        "application": release.application.slug,
        "version": release.version,
        **{name: getattr(release, name) for name in RELEASE_FIELDS},
    }


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _artifact_refused(why: str) -> Invalid:
    return Invalid(f"artifact_url: {why}", code="artifact_untrusted",
                   fields={"artifact_url": [why]})


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def artifact_display(url: str) -> str:
    """An artifact URL fit for logs and messages: no credentials, no query string."""
    parsed = urllib.parse.urlsplit(url)
    netloc = parsed.hostname or ""
    try:
        if parsed.port:
            netloc += f":{parsed.port}"
    except ValueError:
        pass
    shown = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", shown)[:300]


def artifact_source_check(*, url: str) -> str:
    """SOP 10.1: the artifact URL names a trusted source (``PORTAL_ARTIFACT_SOURCES``).

    Returns what is to be read: the real path of a file:// artifact (symlinks resolved,
    inside a trusted directory), or the URL of an http(s) one. Raises ``Invalid`` on
    the ``artifact_url`` field otherwise. Registration and the worker both call it.
    """
    sources = [s.strip() for s in settings.PORTAL_ARTIFACT_SOURCES if s.strip()]
    trusted = ", ".join(sources) or "none configured"
    if any(c in url for c in "\x00\r\n\t\\"):
        raise _artifact_refused("the URL contains control characters or backslashes")
    if _CONTROL.search(urllib.parse.unquote(url)):
        # %00 and its kind: a path holding NUL cannot be opened (a ValueError deep in
        # os.path), and a control character has no place in an artifact's name.
        raise _artifact_refused("the URL contains percent-encoded control characters")
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    path = urllib.parse.unquote(parsed.path)
    if ".." in path.split("/"):
        raise _artifact_refused("'..' is not allowed in an artifact path")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise _artifact_refused("a file:// artifact URL is an absolute path on this host")
        real = os.path.realpath(path)
        for source in sources:
            prefix = urllib.parse.urlsplit(source)
            if prefix.scheme.lower() != "file":
                continue
            root = os.path.realpath(urllib.parse.unquote(prefix.path)).rstrip("/") + "/"
            if real.startswith(root):
                return real
        raise _artifact_refused(f"{artifact_display(url)} is not inside a trusted artifact "
                                f"source ({trusted})")
    if scheme not in ("http", "https"):
        raise _artifact_refused("artifact URLs are file://, http:// or https://")
    if parsed.username is not None or parsed.password is not None:
        raise _artifact_refused("credentials do not belong in an artifact URL")
    try:
        outbound.check_url(url, resolve=False)
    except outbound.DestinationRefused as exc:
        raise _artifact_refused(str(exc)) from None
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _artifact_refused("the URL's port is not a number") from None
    for source in sources:
        prefix = urllib.parse.urlsplit(source)
        if prefix.scheme.lower() != scheme or not prefix.hostname:
            continue
        prefix_port = prefix.port or (443 if scheme == "https" else 80)
        if (prefix.hostname.lower(), prefix_port) != ((parsed.hostname or "").lower(), port):
            continue
        root = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
        if parsed.path.startswith(root) or parsed.path == prefix.path:
            return url
    raise _artifact_refused(f"{artifact_display(url)} is not under a trusted artifact "
                            f"source ({trusted})")


def _artifact_check(artifact_url: str, artifact_sha256: str) -> None:
    if artifact_sha256 and not SHA256_HEX.match(artifact_sha256):
        raise Invalid("artifact_sha256: not a SHA-256 digest", fields={
            "artifact_sha256": ["A SHA-256 digest is 64 hex characters."]})
    if not artifact_url:
        return
    artifact_source_check(url=artifact_url)
    if not artifact_sha256:
        raise Invalid("artifact_sha256: a release with an artifact carries its SHA-256",
                      code="artifact_digest_missing", fields={"artifact_sha256": [
                          "Give the artifact's SHA-256: it is checked before deployment."]})


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
    Only people (and CI accounts) who may request changes somewhere register them:
    a version claimed by anyone else would lock CI out of it.
    """
    if not isinstance(actor, System) and not any(
            "request_change" in codes for codes in environment_permissions(actor).values()):
        raise Refused("you may not register releases", code="not_permitted")
    artifact_url = (artifact_url or "").strip()
    artifact_sha256 = (artifact_sha256 or "").strip().lower()
    try:
        _artifact_check(artifact_url, artifact_sha256)
    except Invalid as exc:
        # Recorded in its own transaction: an attempt to register an untrusted
        # artifact is worth an auditor's attention even though nothing was created.
        with transaction.atomic():
            audit_record(actor=actor, action="release.refused", object_type="release",
                         object_repr=f"{application.slug} {version}"[:300],
                         after={"code": exc.code,
                                "artifact_url": artifact_display(artifact_url)},
                         reason=exc.detail)
        raise
    wanted = {
        "artifact_url": artifact_url,
        "artifact_sha256": artifact_sha256,
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
    kind: str = Deployment.Kind.DEPLOY,
    rolled_back_deployment: Deployment | None = None,
    dry_run: bool | None = None,
    inputs: dict | None = None,
) -> Deployment:
    """Create a queued deployment with its planned steps and queue its run after commit.

    ``inputs`` is what it runs with besides the release (``deployments.inputs.inputs_of``
    plus, for a change, ``configuration_version`` and ``change_version``): the approval
    workflow passes the values it checked against the approvals; without them, the
    catalogue's current ones are read. They are kept on the deployment and the run uses
    them, whatever is edited meanwhile.

    When another deployment of the application holds the target in the environment (or
    others wait before it), it waits in the queue (``holds_target`` False) and starts
    when its turn comes (``_advance_queue``). Must be called inside the caller's
    transaction (the change that releases it).
    """
    application = release.application
    if strategy not in STRATEGIES:
        raise Invalid(f"unknown strategy {strategy!r}",
                      fields={"strategy": [f"Choose one of {', '.join(STRATEGIES)}."]})
    if inputs is None:
        inputs = deployment_inputs.inputs_of(application, environment)
    if dry_run is None:
        dry_run = bool((inputs["executor_settings"] or {}).get("analysis", {})
                       .get("dry_run", False))
    if environment.supersede_queued and kind == Deployment.Kind.DEPLOY:
        superseded = _supersede_queued(actor=actor, application=application,
                                       environment=environment, release=release)
    else:
        superseded = []
    head = _head(application.pk, environment.pk)
    if head is not None and kind == Deployment.Kind.ROLLBACK \
            and head.status == Deployment.Status.QUEUED:
        # A rollback goes before a deployment that has not started yet; that one waits
        # at the front of the queue again.
        Deployment.objects.filter(pk=head.pk).update(holds_target=False)
        head = None
    # It takes the target at once only when nothing holds it and nothing waits before it
    # (a rollback goes first); else it waits and the queue moves after commit. The
    # database settles two requests at once: one head per application and environment.
    takes = head is None and (kind == Deployment.Kind.ROLLBACK or not _waiting(
        application.pk, environment.pk).exists())
    task_id = uuid.uuid4().hex
    fields = dict(application=application, environment=environment, release=release,
                  strategy=strategy, change_id=change_id, task_id=task_id, kind=kind,
                  started_by=actor if getattr(actor, "pk", None) else None,
                  rolled_back_deployment=rolled_back_deployment, dry_run=dry_run,
                  inputs=inputs)
    deployment = None
    if takes:
        try:
            with transaction.atomic():
                deployment = Deployment.objects.create(holds_target=True, **fields)
        except IntegrityError:
            # deployment_one_active_per_app_env: another request took the target first.
            head = _head(application.pk, environment.pk)
    if deployment is None:
        deployment = Deployment.objects.create(holds_target=False, **fields)
    plan = build_plan(strategy=strategy, targets=deployment_inputs.targets(deployment),
                      release=release, environment=environment, application=application,
                      kind=kind, inputs=inputs)
    DeploymentStep.objects.bulk_create(
        DeploymentStep(deployment=deployment, position=i, name=spec.name, title=spec.title,
                       target=spec.target, phase=spec.phase)
        for i, spec in enumerate(plan, start=1)
    )
    after = {"release": release.version, "strategy": strategy, "change": change_id,
             "kind": kind, "dry_run": dry_run, "steps": len(plan),
             "rolls_back": rolled_back_deployment.pk if rolled_back_deployment else None}
    if not deployment.holds_target:
        after["waits_for"] = head.pk if head is not None else None
        after["queue_position"] = queue_position(deployment)
    if superseded:
        after["supersedes"] = superseded
    audit_record(actor=actor, action="deployment.queued", obj=deployment,
                 environment=environment.slug, after=after)
    if deployment.holds_target:
        transaction.on_commit(lambda: _enqueue(deployment.pk, task_id))
    else:
        _advance_after_commit(application.pk, environment.pk)
    return deployment


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


def _head(application_id: int, environment_id: int) -> Deployment | None:
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


def _supersede_queued(*, actor, application: Application, environment: Environment,
                      release: Release) -> list[int]:
    """Newest first: cancel the application's deployments still queued here (not
    started), each under its row lock. Their changes go back to approved."""
    done = []
    older = (Deployment.objects.select_for_update(of=("self",))
             .select_related("environment", "release")
             .filter(application=application, environment=environment,
                     status=Deployment.Status.QUEUED, kind=Deployment.Kind.DEPLOY)
             .order_by("created_at", "id"))
    for old in older:
        reason = (f"superseded by a newer deployment of {application.slug} "
                  f"{release.version} ({environment.name} runs the newest queued one)")
        old.status = Deployment.Status.CANCELLED
        old.finished_at = timezone.now()
        old.failure_reason = reason
        old.holds_target = False
        old.save(update_fields=["status", "finished_at", "failure_reason", "holds_target"])
        audit_record(actor=actor, action="deployment.superseded", obj=old,
                     environment=environment.slug,
                     before={"status": Deployment.Status.QUEUED},
                     after={"status": old.status, "version": old.release.version,
                            "superseded_by_version": release.version}, reason=reason)
        _announce_end(old, old.status, advance=False)
        done.append(old.pk)
    return done


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
    if _head(application_id, environment_id) is not None:
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
    nxt.heartbeat_at = timezone.now()
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
    claims it (``_claim_run``). The engine imports nothing above it; the apps that know
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
    _finish(deployment, Deployment.Status.CANCELLED, f"not started: {reason}",
            actor=System(f"start check of deployment #{deployment.pk}"))


def _enqueue(deployment_id: int, task_id: str) -> bool:
    """Hand the deployment to the workers of its environment's queue; False when Redis
    cannot be reached.

    The deployment row is committed before this runs, so a refused publish loses
    nothing: the sweep (deployments_resume_stale) queues it again once Redis is back.
    """
    from deployments.tasks import deployment_execute

    slug = (Deployment.objects.filter(pk=deployment_id)
            .values_list("environment__slug", flat=True).first())
    queue = deploy_queue(slug or "")
    try:
        deployment_execute.apply_async(args=[deployment_id], task_id=task_id, queue=queue)
    except Exception as exc:  # noqa: BLE001 - kombu's connection errors vary by transport
        logger.warning("deployment %s is queued but its task could not reach the broker "
                       "(%s); it is sent again once the broker is back",
                       deployment_id, exc.__class__.__name__)
        return False
    return True


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


def _claim_run(deployment_id: int) -> Deployment | None:
    """Move queued -> running, or pick up a running deployment whose run died."""
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
            _finish(deployment, Deployment.Status.CANCELLED, deployment.failure_reason
                    or "cancelled")
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


def _finish(deployment: Deployment, status: str, reason: str = "", actor=None) -> None:
    """Inside a transaction holding the deployment's row lock."""
    before = deployment.status
    deployment.status = status
    deployment.finished_at = deployment.finished_at or timezone.now()
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
    deployment = _claim_run(deployment_id)
    if deployment is None:
        return None
    last = DeploymentLogLine.objects.filter(deployment=deployment).aggregate(m=Max("seq"))["m"]
    state = RunState(deployment_id=deployment.pk, next_seq=(last or 0) + 1)

    def log(level: str, message: str) -> None:
        _log(state, level, message)

    _wait_for_rolled_back_run(deployment, log)
    try:
        executor = executor_for(deployment, log)
        executor.configuration = _configuration_for(deployment, state.secrets)
    except (StepFailed, DomainError) as exc:
        first = deployment.steps.order_by("position").first()
        reason = getattr(exc, "detail", None) or str(exc)
        log("error", f"Configuration not handed to the deployment: {reason}")
        return _fail(deployment, first, state.mask(reason))
    steps = list(deployment.steps.select_related("target").order_by("position"))
    deployment_inputs.pin_targets(deployment, steps)
    _log_start(deployment, log)
    for step in steps:
        if step.status in (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED):
            continue
        outcome = _run_step(deployment, step, steps, executor, state, log)
        if outcome is not _NEXT_STEP:
            return outcome
    return _end_run(deployment, log)


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
            Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=timezone.now())
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
    ).update(status=DeploymentStep.Status.RUNNING, started_at=timezone.now(),
             attempts=F("attempts") + 1)
    if claimed != 1:
        return None  # another run holds this step
    step.attempts += 1
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=timezone.now())
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
        if step.name in HEALTH_STEPS and deployment.kind == Deployment.Kind.DEPLOY:
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
        status=DeploymentStep.Status.SUCCEEDED, finished_at=timezone.now(), detail=detail
    )
    step.status = DeploymentStep.Status.SUCCEEDED
    Deployment.objects.filter(pk=deployment.pk).update(
        progress=int(step.position * 100 / len(steps)), heartbeat_at=timezone.now()
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
            _finish(deployment, Deployment.Status.CANCELLED,
                    deployment.failure_reason or "cancelled",
                    actor=System(f"worker stopping deployment #{deployment.pk}"))
            return Deployment.Status.CANCELLED
        what = "Rollback" if deployment.kind == Deployment.Kind.ROLLBACK else "Deployment"
        log("info", f"{what} succeeded")
        _finish(deployment, Deployment.Status.SUCCEEDED)
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
                    status=DeploymentStep.Status.SUCCEEDED, finished_at=timezone.now(),
                    detail=f"marked done by {who}" + (f": {reason}" if reason else ""))
        locked.status = Deployment.Status.RUNNING
        locked.failure_reason = ""
        locked.heartbeat_at = timezone.now()
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


def _stopped(deployment_id: int) -> str | None:
    """The final status someone gave the deployment while it ran (rollback), or
    ``cancelled`` once a deployment being stopped is between steps."""
    status = Deployment.objects.filter(pk=deployment_id).values_list("status", flat=True).first()
    if status == Deployment.Status.STOPPING:
        with transaction.atomic():
            locked = (Deployment.objects.select_for_update(of=("self",))
                      .select_related("environment").get(pk=deployment_id))
            if locked.status == Deployment.Status.STOPPING:
                _finish(locked, Deployment.Status.CANCELLED, locked.failure_reason or "cancelled",
                        actor=System(f"worker stopping deployment #{locked.pk}"))
            status = locked.status
    return status if status in Deployment.FINAL else None


def _fail(deployment: Deployment, step: DeploymentStep | None, reason: str) -> str:
    with transaction.atomic():
        if step is not None:
            DeploymentStep.objects.filter(pk=step.pk).update(
                status=DeploymentStep.Status.FAILED, finished_at=timezone.now(), detail=reason
            )
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        if not locked.is_final:
            _finish(locked, Deployment.Status.FAILED, reason)
    return Deployment.Status.FAILED


# --- health analysis (SOP 8.1) -----------------------------------------------


def _analysis_settings(deployment: Deployment) -> dict:
    return deployment_inputs.executor_settings(deployment).get("analysis", {}) or {}


def _provider(deployment: Deployment):
    return health.provider_for(_analysis_settings(deployment))


def _record_baseline(deployment, step, executor, log) -> None:
    """Sample the running version before anything changes: the canary's yardstick."""
    if deployment.kind != Deployment.Kind.DEPLOY or not any(
            s.name == "analysis" for s in deployment.steps.all()):
        return
    if AnalysisVerdict.objects.filter(deployment=deployment,
                                      outcome=AnalysisVerdict.Outcome.BASELINE).exists():
        return
    targets = deployment_inputs.targets(deployment)
    provider = _provider(deployment)
    if isinstance(provider, health.PrometheusProvider):
        previous = _previous_success(deployment)
        if previous is None:
            return
        figures = provider.measure_version(previous.release.version, [t.name for t in targets])
    else:
        endpoints = {k: v for k, v in executor.endpoints(targets).items() if v}
        if not endpoints:
            log("info", "No running version to sample: analysis uses the SOP thresholds alone")
            return
        figures = provider.measure(endpoints)
    AnalysisVerdict.objects.create(
        deployment=deployment, step=step, phase="before deployment", provider=provider.name,
        outcome=AnalysisVerdict.Outcome.BASELINE, figures={"baseline": figures.as_dict()},
        reasons=[f"baseline: error rate {figures.error_rate}%, p95 {figures.p95_ms} ms over "
                 f"{figures.requests} requests"],
    )
    log("info", f"Baseline: error rate {figures.error_rate}%, p95 {figures.p95_ms} ms "
                f"({figures.requests} requests on {len(figures.targets)} target(s))")


def _analyse(deployment, step, steps, executor, log) -> str | None:
    """Compare targets on the new version with the baseline; None means carry on."""
    new_names = {s.target.name for s in steps
                 if s.target_id and s.position < step.position
                 and s.name in ("deploy", "switch")}
    targets = deployment_inputs.targets(deployment)
    canary = [t for t in targets if t.name in new_names]
    rest = [t for t in targets if t.name not in new_names]
    provider = _provider(deployment)
    thresholds = health.Thresholds.from_settings(_analysis_settings(deployment))
    if isinstance(provider, health.PrometheusProvider):
        canary_figures = provider.measure_version(deployment.release.version,
                                                  [t.name for t in canary])
        previous = _previous_success(deployment)
        baseline = (provider.measure_version(previous.release.version, [t.name for t in rest])
                    if previous and rest else None)
    else:
        canary_figures = provider.measure(executor.endpoints(canary))
        baseline = None
        live_rest = {k: v for k, v in executor.endpoints(rest).items() if v}
        if live_rest:
            baseline = provider.measure(live_rest)
    if baseline is None:
        recorded = AnalysisVerdict.objects.filter(
            deployment=deployment, outcome=AnalysisVerdict.Outcome.BASELINE).first()
        if recorded:
            baseline = health.Figures(**{k: v for k, v in recorded.figures["baseline"].items()
                                         if k != "error_rate"})
    verdict = health.evaluate(canary_figures, baseline, thresholds)
    outcome = (AnalysisVerdict.Outcome.PASSED if verdict.passed
               else AnalysisVerdict.Outcome.FAILED)
    action = "continued"
    if not verdict.passed:
        action = "reported" if deployment.dry_run else "rolled_back"
    record = AnalysisVerdict.objects.create(
        deployment=deployment, step=step, phase=step.phase, provider=provider.name,
        outcome=outcome, dry_run=deployment.dry_run, action=action, figures=verdict.figures,
        reasons=verdict.reasons,
    )
    summary = "; ".join(verdict.reasons)
    if verdict.passed:
        step.detail = f"passed: {summary}"
        return None
    if deployment.dry_run:
        log("warning", f"Dry run: SOP 8.1 criteria crossed, a real run would roll back now: "
                       f"{summary}")
        step.detail = f"failed (dry run, no action): {summary}"
        return None
    log("error", f"Analysis failed: {summary}")
    return _roll_back_automatically(deployment, step, f"analysis at {step.phase}: {summary}",
                                    log, verdict_id=record.pk)


# --- rollback (SOP 8) ---------------------------------------------------------


def _previous_success(deployment: Deployment) -> Deployment | None:
    """The last successful deployment of another release before this one."""
    return (Deployment.objects.filter(
        application_id=deployment.application_id, environment_id=deployment.environment_id,
        status=Deployment.Status.SUCCEEDED, created_at__lt=deployment.created_at,
    ).exclude(release_id=deployment.release_id).select_related("release")
        .order_by("-created_at", "-id").first())


def irreversible_since(deployment: Deployment, after) -> list[tuple[object, str]]:
    """(when, what) of each irreversible migration applied in this environment by a
    deployment created after the moment ``after``, up to and including ``deployment``.
    One query, whatever the span: the rollback options of a page ask it once."""
    applied = (DeploymentStep.objects.filter(
        name="migrate", status=DeploymentStep.Status.SUCCEEDED,
        deployment__application_id=deployment.application_id,
        deployment__environment_id=deployment.environment_id,
        deployment__kind=Deployment.Kind.DEPLOY,
        deployment__created_at__gt=after,
        deployment__created_at__lte=deployment.created_at,
    ).select_related("deployment__release"))
    found = []
    for step in applied:
        release = step.deployment.release
        for migration in release.migration_plan or []:
            if migration.get("kind") == MigrationKind.IRREVERSIBLE:
                found.append((step.deployment.created_at,
                              f"{migration['name']} (release {release.version})"))
    return found


def irreversible_between(deployment: Deployment, back_to: Deployment) -> list[str]:
    """Irreversible migrations applied in this environment after ``back_to``, up to
    and including ``deployment``: rolling back would cross them."""
    return sorted({name for _, name in irreversible_since(deployment, back_to.created_at)})


def _rollback_refusal(deployment: Deployment) -> tuple[Deployment | None, str]:
    back_to = _previous_success(deployment)
    if back_to is None:
        return None, (f"there is no earlier successful release of "
                      f"{deployment.application.slug} in {deployment.environment.name} "
                      "to roll back to")
    crossing = irreversible_between(deployment, back_to)
    if crossing:
        return back_to, (f"rolling back to {back_to.release.version} would cross the "
                         f"irreversible migration {', '.join(crossing)}; restore the database "
                         "from its backup or fix forward under an emergency change")
    return back_to, ""


def _start_rollback(*, actor, deployment: Deployment, back_to: Deployment,
                    reason: str) -> Deployment:
    """Inside the transaction that made ``deployment`` final."""
    strategy = "blue_green" if deployment.strategy == "blue_green" else "all_at_once"
    rollback = deployment_create(
        actor=actor, release=back_to.release, environment=deployment.environment,
        strategy=strategy, change_id=deployment.change_id, kind=Deployment.Kind.ROLLBACK,
        rolled_back_deployment=deployment,
    )
    audit_record(actor=actor, action="deployment.rollback_started", obj=rollback,
                 environment=deployment.environment.slug, reason=reason,
                 after={"rolls_back": deployment.pk, "to_version": back_to.release.version,
                        "from_version": deployment.release.version})
    return rollback


def _roll_back_automatically(deployment, step, reason: str, log,
                             verdict_id: int | None = None) -> str:
    """SOP 8.1 criteria crossed: redeploy the previous good release, or say why not."""
    with transaction.atomic():
        DeploymentStep.objects.filter(pk=step.pk).update(
            status=DeploymentStep.Status.FAILED, finished_at=timezone.now(), detail=reason)
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment", "application", "release")
                  .get(pk=deployment.pk))
        if locked.is_final:
            return locked.status
        actor = System(f"automatic rollback of deployment #{locked.pk}")
        back_to, refusal = _rollback_refusal(locked)
        if refusal:
            log("error", f"Automatic rollback refused: {refusal}. The on-call engineer "
                         "must decide.")
            audit_record(actor=actor, action="deployment.rollback_refused", obj=locked,
                         environment=locked.environment.slug, reason=refusal)
            if verdict_id is not None:
                # In the transaction that ends the deployment: whoever sees it failed
                # sees why.
                AnalysisVerdict.objects.filter(pk=verdict_id).update(action="rollback_refused")
            _finish(locked, Deployment.Status.FAILED,
                    f"{reason}. Automatic rollback refused: {refusal}")
            return Deployment.Status.FAILED
        _finish(locked, Deployment.Status.ROLLED_BACK,
                f"{reason}. Rolled back automatically to {back_to.release.version}.")
        rollback = _start_rollback(actor=actor, deployment=locked, back_to=back_to,
                                   reason=reason)
        log("warning", f"Rolling back automatically to {back_to.release.version} "
                       f"(deployment #{rollback.pk})")
    return Deployment.Status.ROLLED_BACK


@assurance.refusals_audited
def deployment_rollback(*, actor, deployment: Deployment, reason: str) -> Deployment:
    """Roll back ``deployment``: redeploy the previous successful release of its
    environment. Returns the rollback deployment (queued).

    Refused without the `rollback` permission on the environment, for a deployment
    that is not the latest of its application there, and across an irreversible
    migration (DESIGN.md section 8).
    """
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("a rollback needs a reason", fields={"reason": ["Say why."]})
    try:
        with transaction.atomic():
            locked = (Deployment.objects.select_for_update(of=("self",))
                      .select_related("environment", "application", "release")
                      .get(pk=deployment.pk))
            # An authenticated hook acting as the portal (System) holds no permissions.
            if not isinstance(actor, System) and not has_env_perm(actor, "rollback",
                                                                  locked.environment):
                raise Refused(f"you may not roll back in {locked.environment.name}",
                              code="not_permitted")
            # In Production a person rolls back only with a second factor used recently
            # (SOP 10.2); an alert acting as the portal is not asked.
            factor = (assurance.require_fresh_second_factor(
                actor=actor, doing=f"roll back in {locked.environment.name}",
                environment=locked.environment.slug)
                if locked.environment.production else {})
            if locked.status == Deployment.Status.QUEUED:
                raise InvalidTransition(f"deployment #{locked.pk} has not started; cancel it",
                                        code="not_started")
            if locked.status in (Deployment.Status.ROLLED_BACK,):
                raise InvalidTransition(f"deployment #{locked.pk} is already rolled back",
                                        code="already_rolled_back")
            newer = Deployment.objects.filter(
                application_id=locked.application_id, environment_id=locked.environment_id,
                created_at__gt=locked.created_at).exclude(pk=locked.pk).exclude(
                status=Deployment.Status.QUEUED, holds_target=False)  # not started
            if newer.exists():
                raise InvalidTransition(
                    f"deployment #{locked.pk} is not the latest of {locked.application.slug} "
                    f"in {locked.environment.name}; roll back the latest one",
                    code="not_latest")
            back_to, refusal = _rollback_refusal(locked)
            if refusal:
                raise Conflict(refusal, code="irreversible_migration" if back_to
                               else "nothing_to_roll_back_to")
            before = locked.status
            locked.status = Deployment.Status.ROLLED_BACK
            locked.finished_at = locked.finished_at or timezone.now()
            who = actor.reason if isinstance(actor, System) else actor.get_username()
            locked.failure_reason = f"rolled back by {who}: {reason}"
            locked.save(update_fields=["status", "finished_at", "failure_reason"])
            audit_record(actor=actor, action="deployment.rolled_back", obj=locked,
                         environment=locked.environment.slug, before={"status": before},
                         after={"status": locked.status, "to_version": back_to.release.version,
                                **factor},
                         reason=reason)
            rollback = _start_rollback(actor=actor, deployment=locked, back_to=back_to,
                                       reason=reason)
            _announce_end(locked, locked.status)
            return rollback
    except (Refused, Conflict) as exc:
        _refusal_audited(actor, deployment, exc)
        raise


def _refusal_audited(actor, deployment: Deployment, exc) -> None:
    """A refused rollback is itself on the record (its own transaction survives)."""
    with transaction.atomic():
        audit_record(actor=actor, action="deployment.rollback.refused", obj=deployment,
                     environment=deployment.environment.slug, reason=exc.detail,
                     after={"code": exc.code})


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
        locked.finished_at = timezone.now()
        locked.save(update_fields=["status", "finished_at", "failure_reason"])
        audit_record(actor=actor, action="deployment.cancelled", obj=locked,
                     environment=locked.environment.slug, before={"status": before},
                     after={"status": locked.status, "queue_position": position},
                     reason=reason)
        _announce_end(locked, locked.status)
    return locked


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
    now = timezone.now()
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
        if run_is_live(pk):
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
            if deployment is None or run_is_live(pk):
                continue
            if deployment.status == Deployment.Status.STOPPING:
                # Its worker died while it was being stopped: nothing runs, it is cancelled.
                _finish(deployment, Deployment.Status.CANCELLED,
                        deployment.failure_reason or "cancelled",
                        actor=System("stale deployment detector"))
            elif deployment.attempts >= MAX_ATTEMPTS:
                _finish(deployment, Deployment.Status.FAILED,
                        "the worker stopped responding and attempts are exhausted",
                        actor=detector)
            else:
                deployment.heartbeat_at = timezone.now()
                deployment.save(update_fields=["heartbeat_at"])
                audit_record(actor=detector, action="deployment.requeued", obj=deployment,
                             environment=deployment.environment.slug,
                             reason="its run stopped (worker or database gone)")
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
        if run_is_live(pk):
            continue
        if not _enqueue(pk, uuid.uuid4().hex):
            break  # the broker is still away; the next sweep tries again
        with transaction.atomic():
            deployment = Deployment.objects.select_for_update(skip_locked=True).filter(
                pk=pk, status=Deployment.Status.QUEUED).select_related("environment").first()
            if deployment is None:
                continue
            deployment.heartbeat_at = timezone.now()
            deployment.save(update_fields=["heartbeat_at"])
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
