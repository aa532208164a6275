"""Pages of the shared core: home, the audit list."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import render

from approvals.selectors import change_detail_queryset, inbox_gates
from deployments.selectors import deployments_visible_to
from portal.models import AuditEvent
from portal.permissions import is_auditor


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


@login_required
def audit_list(request):
    if not is_auditor(request.user):
        raise PermissionDenied("Only auditors and administrators may read the audit trail.")
    events = AuditEvent.objects.all().order_by("-id")
    filters = {k: request.GET.get(k, "").strip() for k in ("action", "actor", "environment")}
    if filters["action"]:
        events = events.filter(action__startswith=filters["action"])
    if filters["actor"]:
        events = events.filter(actor_name__istartswith=filters["actor"])
    if filters["environment"]:
        events = events.filter(environment=filters["environment"])
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "portal/audit_list.html", {"page": page, "filters": filters})


def healthz(request):
    """Liveness for load balancers and compose health checks."""
    return HttpResponse("ok", content_type="text/plain")
