"""Pages of the shared core: home, health. The auditor's pages are in auditor_views."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
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
    })


def healthz(request):
    """Liveness for load balancers and compose health checks."""
    return HttpResponse("ok", content_type="text/plain")
