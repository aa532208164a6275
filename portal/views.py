"""Health of the process: liveness and readiness probes."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse


def healthz(request):
    """Liveness: this process answers. Nothing else is checked (see readyz)."""
    return HttpResponse("ok", content_type="text/plain")


def readyz(request):
    """Readiness: PostgreSQL, Redis, a live worker and a fresh beat; 503 if one fails."""
    from django.db import connection

    from core import liveness

    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgres"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready"
        checks["postgres"] = {"ok": False, "error": exc.__class__.__name__}
        connection.close_if_unusable_or_obsolete()
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
