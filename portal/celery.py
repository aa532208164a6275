"""The Celery app: workers and beat run the portal's background work."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
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
