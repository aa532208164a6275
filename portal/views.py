"""Health of the process: liveness and readiness probes."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse


def healthz(request):
    """Liveness: this process answers. Nothing else is checked (see readyz)."""
    return HttpResponse("ok", content_type="text/plain")


def readyz(request):
    """Readiness: PostgreSQL accepts a new connection, Redis answers, a worker is alive
    and beat is fresh; 503 if one fails."""
    from core import liveness

    checks = {"postgres": _postgres_accepts_connections()}
    alive = liveness.status()
    checks["redis"] = ({"ok": True} if alive.redis
                       else {"ok": False, "error": "cannot reach Redis"})
    checks["worker"] = ({"ok": True, "alive": alive.workers} if alive.workers
                        else {"ok": False, "error": "no worker heartbeat"})
    checks["beat"] = ({"ok": True, "age_seconds": round(alive.beat_age, 1)} if alive.beat
                      else {"ok": False, "error": "beat heartbeat missing or stale",
                            "age_seconds": None if alive.beat_age is None
                            else round(alive.beat_age, 1)})
    ready = all(c["ok"] for c in checks.values())
    failing = [name for name, c in checks.items() if not c["ok"]]
    return JsonResponse({"status": "ok" if ready else "unavailable", "failing": failing,
                         "checks": checks}, status=200 if ready else 503)


def _postgres_accepts_connections() -> dict:
    """Whether PostgreSQL accepts a new connection: one is opened and closed.

    Not the process's persistent connection, which stays up while the server refuses
    every new one (max_connections reached, a pooler full, the database closed to
    connections): a worker or another web process would fail where this one works.
    """
    from django.db import connection

    params = dict(connection.get_connection_params())
    params["connect_timeout"] = 3
    try:
        new = connection.Database.connect(**params)
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready"
        return {"ok": False, "error": exc.__class__.__name__}
    try:
        new.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": exc.__class__.__name__}
    finally:
        new.close()
    return {"ok": True}
