"""The history's work: an executor and a health provider that touch no machine, and the
engine running the history's deployments in this process."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from django.conf import settings

from catalog.models import Application, Environment
from core import dispatch
from deployments import health
from deployments import services as deployment_services
from deployments.executors import register_executor, unregister_executor
from deployments.executors.base import Executor, StepFailed
from deployments.health import register_health_provider, unregister_health_provider
from deployments.models import Deployment
from notifications import services as notification_services

# The executor kind and the health provider the history's applications use (the
# defaults: no executor and no provider named in their settings). The history's own
# take their place while it runs, in its process only, and give them back after.
EXECUTOR_KIND = "local"
PROVIDER_NAME = "http"

# (application slug, version, environment slug) -> (step name, what went wrong)
FAILING_STEPS: dict[tuple[str, str, str], tuple[str, str]] = {}
# (application slug, version): releases whose canary answers with errors
BAD_RELEASES: set[tuple[str, str]] = set()


class HistoryExecutor(Executor):
    """Reports each SOP step done, as the real executor would, without doing it."""

    steps_safe_to_repeat = True

    def __init__(self, deployment, log) -> None:
        super().__init__(deployment, log)
        self.updated: set[str] = set()

    def run(self, step) -> str:
        d = self.deployment
        failing = FAILING_STEPS.get((d.application.slug, d.release.version, d.environment.slug))
        if failing and failing[0] == step.name and d.kind == Deployment.Kind.DEPLOY:
            raise StepFailed(failing[1])
        where = step.target.name if step.target_id else d.environment.slug
        version = d.release.version
        if step.name in ("deploy", "deploy_idle", "switch") and step.target_id:
            self.updated.add(step.target.name)
        if step.name == "migrate":
            plan = d.release.migration_plan if d.kind == Deployment.Kind.DEPLOY else []
            return (f"applied {', '.join(m['name'] for m in plan)}" if plan
                    else "no migrations in this release")
        if step.name == "verify_migrations":
            return "schema matches the release's migration plan"
        details = {
            "pre_health_check": f"{d.environment.name} healthy before the change",
            "backup": f"current version kept for rollback on {where}",
            "backup_database": "database snapshot taken",
            "stop": f"services stopped on {where}",
            "deploy": f"{version} unpacked on {where}, SHA-256 verified",
            "deploy_idle": f"{version} in the idle slot of {where}",
            "health_check_idle": f"idle slot of {where} answers /health",
            "switch": f"traffic on {where} switched to {version}",
            "start": f"services started on {where}",
            "health_check": f"{where} answers /health with 200",
            "finalize": f"{version} recorded as current",
        }
        return details.get(step.name, "done")

    def endpoints(self, targets, slot: str = "live") -> dict[str, tuple[str, int] | None]:
        # Which version each target runs, in place of an address: the provider reads it.
        return {t.name: ("new" if t.name in self.updated else "old", 0) for t in targets}


class HistoryProvider:
    """Health figures a release would have shown: a bad one errors on its canary."""

    name = "demo"

    def __init__(self, conf: dict | None = None, deployment: Deployment | None = None) -> None:
        # Bad under production traffic only: it passed development and staging.
        self.bad = deployment is not None and (
            (deployment.application.slug, deployment.release.version) in BAD_RELEASES
            and deployment.environment.slug == "production")
        self.random = random.Random(deployment.pk if deployment is not None else 0)

    def measure(self, endpoints: dict) -> health.Figures:
        names = sorted(endpoints)
        rng = self.random
        new = any(where and where[0] == "new" for where in endpoints.values())
        requests = 20 * max(1, len(names))
        if self.bad and new:
            errors, p95 = int(requests * 0.35), 640.0 + rng.randint(0, 80)
        else:
            errors, p95 = 0, 110.0 + rng.randint(0, 8)
        return health.Figures(targets=names, requests=requests, errors=errors,
                              p50_ms=round(p95 / 2.4, 1), p95_ms=p95,
                              p99_ms=round(p95 * 1.3, 1))


@contextmanager
def engine_for_history() -> Iterator[None]:
    """While the history is made: the engine runs deployments here (``run_queued``), with
    the executor and provider above, instead of handing them to the workers.

    Everything the services queue is held (``core.dispatch``): the history runs the
    deployments itself and sends the notifications after each step
    (``send_held_notifications``).
    """
    previous_executor = register_executor(EXECUTOR_KIND, HistoryExecutor)
    previous_provider = register_health_provider(PROVIDER_NAME, HistoryProvider)
    previous_backend = settings.EMAIL_BACKEND
    # The notifications of the past were sent in the past: here, at the clock's time, to
    # a mailbox in memory rather than to the console of a running portal.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    try:
        with ExitStack() as stack:
            stack.enter_context(dispatch.override("hold"))
            yield
    finally:
        settings.EMAIL_BACKEND = previous_backend
        unregister_health_provider(PROVIDER_NAME, previous_provider)
        unregister_executor(EXECUTOR_KIND, previous_executor)
        dispatch.clear_held()


def send_held_notifications() -> None:
    """Send what the last step queued for sending, now, at the clock's time; the rest it
    queued (the deployments' tasks) is the history's to run or to leave."""
    from notifications.tasks import notification_send

    held = dispatch.held(notification_send.name)
    dispatch.clear_held()
    for task in held:
        notification_services.notification_send(notification_id=task.args[0])


def run_queued(application: Application, environment: Environment) -> list[Deployment]:
    """Run the queued deployments of ``application`` there (and the rollbacks they start)."""
    ran = []
    while True:
        queued = (Deployment.objects.filter(application=application, environment=environment,
                                            status=Deployment.Status.QUEUED)
                  .order_by("id").first())
        if queued is None:
            return ran
        deployment_services.deployment_run(deployment_id=queued.pk)
        queued.refresh_from_db()
        ran.append(queued)
