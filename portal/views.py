"""Pages of the shared core: home, health. The auditor's pages are in auditor_views."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from approvals.selectors import change_detail_queryset, inbox_gates
from deployments.selectors import deployments_visible_to


@login_required
def home(request):
    my_changes = list(
        change_detail_queryset().filter(requested_by=request.user).order_by("-created_at")[:10]
    )
    waiting = inbox_gates(request.user).count()
    recent = list(deployments_visible_to(request.user).order_by("-created_at")[:10])
    return render(request, "portal/home.html", {
        "my_changes": my_changes, "waiting": waiting, "recent": recent,
        "background": _background_banner(),
    })


def _background_banner() -> str:
    """One line when no worker or no beat is alive, saying what waits for them."""
    from deployments.models import Deployment
    from portal import liveness

    alive = liveness.status()
    if alive.ok:
        return ""
    pending = Deployment.objects.filter(status__in=Deployment.ACTIVE).count()
    waits = f"{pending} deployment{'s' if pending != 1 else ''} wait{'s' if pending == 1 else ''}"
    if not alive.redis:
        return f"{waits}; the task queue (Redis) cannot be reached"
    if alive.workers == 0:
        return f"{waits}; no worker is running"
    return f"{waits}; the scheduler (beat) is not running, so stalled deployments are not resumed"


def healthz(request):
    """Liveness: this process answers. Nothing else is checked (see readyz)."""
    return HttpResponse("ok", content_type="text/plain")


def readyz(request):
    """Readiness: PostgreSQL, Redis, a live worker and a fresh beat; 503 if one fails."""
    from django.db import connection

    from portal import liveness

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
