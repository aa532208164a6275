"""The backtest page (docs/policies.md, backtest): paste or upload a policy document,
choose how many months back, and see what it would have changed, per environment and
change by change; below, what proposed versions running beside the active one (evaluate
mode) would have decided otherwise on live decisions."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from approvals import services
from approvals.models import PolicyShadowDifference
from approvals.policy_backtest import MAX_DOCUMENT, MAX_MONTHS, backtest, may_backtest
from core.errors import DomainError

LISTED = 300  # differences on the page; the counts cover them all
SHADOWS = 50


def _months(raw) -> int | None:
    try:
        months = int(raw)
    except (TypeError, ValueError):
        return None
    return months if 1 <= months <= MAX_MONTHS else None


def _document(request) -> tuple[str, str]:
    """(text, problem): an uploaded file wins over the text box."""
    upload = request.FILES.get("file")
    if upload is None:
        return request.POST.get("document", ""), ""
    if upload.size > MAX_DOCUMENT:
        return "", f"the file is larger than {MAX_DOCUMENT} bytes"
    try:
        return upload.read().decode("utf-8"), ""
    except UnicodeDecodeError:
        return "", "the file is not UTF-8 text"


def shadow_differences(limit: int = SHADOWS):
    return list(PolicyShadowDifference.objects.select_related(
        "version", "change__environment").order_by("-at", "-id")[:limit])


@login_required
@require_http_methods(["GET", "POST"])
def policy_backtest(request):
    if not may_backtest(request.user):
        raise PermissionDenied("backtests are for auditors, admins, and who proposes or "
                               "decides policy versions")
    active = services.active_version()
    context = {"active": active, "max_months": MAX_MONTHS, "months": 6,
               "draft": active.document if active else "", "shadows": shadow_differences()}
    status = 200
    if request.method == "POST":
        text, problem = _document(request)
        months = _months(request.POST.get("months"))
        context.update(draft=text, months=months or request.POST.get("months", ""))
        if problem:
            context["problems"], status = [problem], 400
        elif months is None:
            context["problems"], status = [f"months: choose 1 to {MAX_MONTHS}"], 400
        else:
            try:
                report = backtest(text[:MAX_DOCUMENT], months=months)
            except DomainError as exc:
                context["problems"] = (exc.fields or {}).get("document") or [exc.detail]
                context["problem_code"], status = exc.code, 400
            else:
                context.update(report=report, listed=report["differences"][:LISTED],
                               more=report["counts"]["differing"] - min(
                                   LISTED, len(report["differences"])))
    return render(request, "approvals/policy_backtest.html", context, status=status)
