"""The home page: my changes, what waits for me, recent deployments, background health."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
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
    from core import liveness
    from deployments.models import Deployment

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
