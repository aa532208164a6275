"""Heartbeats of the background processes, read cheaply on each page view.

Each Celery worker and the beat scheduler run a thread that writes a timestamp to
Redis every ``PORTAL_HEARTBEAT_INTERVAL_SECONDS``: workers in one sorted set
(member: the worker's node name, score: the time), beat in one key. A process that
dies stops writing; after ``PORTAL_LIVENESS_SECONDS`` it counts as gone. Reading
both is one round trip to Redis (``status``), so the dashboard can afford it.

A Redis that cannot be reached reads as "unknown", never as an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

WORKERS_KEY = "portal:heartbeat:workers"
BEAT_KEY = "portal:heartbeat:beat"


def _client():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default backoff makes one refused call take seconds,
    # and a page view or /readyz must answer at once while Redis is away.
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1,
                                socket_timeout=1, retry=Retry(NoBackoff(), 0))


def beat_worker(name: str, *, now: float | None = None) -> None:
    """Record that worker ``name`` is alive now."""
    client = _client()
    now = time.time() if now is None else now
    pipe = client.pipeline()
    pipe.zadd(WORKERS_KEY, {name: now})
    # Forget workers gone for long (renamed hosts, old runs).
    pipe.zremrangebyscore(WORKERS_KEY, 0, now - 24 * 3600)
    pipe.execute()


def beat_scheduler(*, now: float | None = None) -> None:
    """Record that the beat scheduler is alive now."""
    now = time.time() if now is None else now
    _client().set(BEAT_KEY, repr(now), ex=24 * 3600)


def forget_worker(name: str) -> None:
    """A worker that stops cleanly says so at once."""
    try:
        _client().zrem(WORKERS_KEY, name)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


@dataclass(frozen=True)
class Liveness:
    redis: bool
    workers: int
    beat: bool
    beat_age: float | None

    @property
    def ok(self) -> bool:
        return self.redis and self.workers > 0 and self.beat


def status() -> Liveness:
    """How many workers beat recently, and whether beat did: one Redis round trip."""
    window = settings.PORTAL_LIVENESS_SECONDS
    now = time.time()
    try:
        pipe = _client().pipeline()
        pipe.zcount(WORKERS_KEY, now - window, "+inf")
        pipe.get(BEAT_KEY)
        workers, beat = pipe.execute()
    except Exception:  # noqa: BLE001 - Redis down: nothing is known to be alive
        return Liveness(redis=False, workers=0, beat=False, beat_age=None)
    age = now - float(beat) if beat else None
    return Liveness(redis=True, workers=int(workers), beat=age is not None and age <= window,
                    beat_age=age)


def start_heartbeat(write, what: str) -> threading.Event:
    """Call ``write()`` every interval in a daemon thread until the returned event is set.

    A failed write (Redis away) is logged once per outage and retried next interval.
    """
    stop = threading.Event()
    interval = settings.PORTAL_HEARTBEAT_INTERVAL_SECONDS

    def loop() -> None:
        failing = False
        while not stop.is_set():
            try:
                write()
                if failing:
                    logger.info("%s heartbeat: Redis reachable again", what)
                failing = False
            except Exception as exc:  # noqa: BLE001 - keep beating through outages
                if not failing:
                    logger.warning("%s heartbeat: cannot reach Redis (%s); retrying", what,
                                   exc.__class__.__name__)
                failing = True
            stop.wait(interval)

    threading.Thread(target=loop, name=f"{what}-heartbeat", daemon=True).start()
    return stop
