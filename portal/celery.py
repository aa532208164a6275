"""The Celery app: workers and beat run the portal's background work."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# Every task runs again when its transaction dies of a deadlock or serialization failure.
app = Celery("portal", task_cls="core.transient:RetryTransientTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- liveness: heartbeats, and resumption when a worker comes up -------------

from celery import signals  # noqa: E402

_heartbeats: dict = {}


@signals.worker_ready.connect
def _worker_ready(sender=None, **kwargs) -> None:
    """A worker that comes up beats, and picks up deployments whose run died.

    Resuming here, not only on beat's schedule, is what makes a deployment whose
    worker died continue within seconds of a worker being back.
    """
    from core import liveness

    name = sender.hostname if sender is not None else "worker"
    _heartbeats["worker"] = liveness.start_heartbeat(
        lambda: liveness.beat_worker(name), f"worker {name}")
    try:
        from deployments.tasks import deployments_resume_stale

        deployments_resume_stale.apply_async(kwargs={"on_worker_start": True})
    except Exception:  # noqa: BLE001 - beat's sweep does it a little later
        pass


@signals.worker_shutdown.connect
def _worker_shutdown(sender=None, **kwargs) -> None:
    from core import liveness

    stop = _heartbeats.pop("worker", None)
    if stop is not None:
        stop.set()
    name = getattr(sender, "hostname", None)
    if name:
        liveness.forget_worker(name)


@signals.beat_init.connect
def _beat_init(sender=None, **kwargs) -> None:
    from core import liveness

    _heartbeats["beat"] = liveness.start_heartbeat(liveness.beat_scheduler, "beat")


# --- logs: the worker's own handlers carry the bound ids too -------------------


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_context(logger=None, **kwargs) -> None:
    """Celery replaces the root logger's handlers with its own when a worker starts;
    they get the filter and format that ``LOGGING`` gives the portal's (docs/observability.md,
    "Logs"), so a deployment's lines in the worker log carry its id."""
    from core import logcontext

    if logger is not None:
        logcontext.install_on(logger)


# --- deployment queues per environment, persistent connections ----------------


@signals.worker_process_init.connect
def _keep_database_connections(**kwargs) -> None:
    """Each pool process keeps its database connection between tasks (checked before
    reuse): opening one per task costs more than dispatching a deployment."""
    from django.conf import settings
    from django.db import connections

    for alias in connections:
        conf = connections[alias].settings_dict
        conf["CONN_MAX_AGE"] = settings.PORTAL_WORKER_CONN_MAX_AGE
        conf["CONN_HEALTH_CHECKS"] = True


def _follow_environments(hostname: str, stop, interval: float) -> None:
    """A worker for every environment (PORTAL_WORKER_ALL_ENVIRONMENTS) consumes the
    deployment queue of each, new environments included."""
    from django.db import close_old_connections

    from catalog.models import Environment
    from deployments.services import deploy_queue

    consumed: set = set()
    while not stop.is_set():
        try:
            close_old_connections()
            for slug in Environment.objects.values_list("slug", flat=True):
                queue = deploy_queue(slug)
                if queue not in consumed:
                    app.control.add_consumer(queue, destination=[hostname])
                    consumed.add(queue)
        except Exception:  # noqa: BLE001 - the database or Redis is away; try again
            pass
        stop.wait(interval)


@signals.worker_ready.connect
def _worker_ready_all_environments(sender=None, **kwargs) -> None:
    import threading

    from django.conf import settings

    if not settings.PORTAL_WORKER_ALL_ENVIRONMENTS or sender is None:
        return
    stop = threading.Event()
    _heartbeats["environments"] = stop
    threading.Thread(target=_follow_environments, args=(sender.hostname, stop, 1.0),
                     name="portal-environment-queues", daemon=True).start()


@signals.worker_shutdown.connect
def _worker_shutdown_all_environments(sender=None, **kwargs) -> None:
    stop = _heartbeats.pop("environments", None)
    if stop is not None:
        stop.set()
