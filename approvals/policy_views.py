"""Pages of the policy document (docs/policies.md): the versions with the active one,
proposing a new one, and one version with its diff against the version it would
replace, its gates and the decisions on it."""

from __future__ import annotations

import difflib

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from approvals import services
from approvals.models import GateRole, PolicyVersion
from approvals.policy_backtest import may_backtest
from core.errors import DomainError, SecondFactorRequired, StepUpRequired
from identity import stepup_views

MAX_DOCUMENT = 200_000


def diff_lines(old: str, new: str) -> list[tuple[str, str]]:
    """(kind, text) per line of a unified diff: kind is add, del, hunk or same."""
    lines = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), "active",
                                     "proposed", lineterm="", n=3):
        if line.startswith(("---", "+++")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        lines.append((kind, line))
    return lines


@login_required
@require_http_methods(["GET", "POST"])
def policies(request):
    may_propose = services.may_propose(request.user)
    if request.method == "POST":
        text = request.POST.get("document", "")[:MAX_DOCUMENT]
        try:
            version = services.policy_propose(actor=request.user, text=text,
                                              summary=request.POST.get("summary", ""))
        except (StepUpRequired, SecondFactorRequired) as exc:
            return stepup_views.answer(request, exc)
        except DomainError as exc:
            return render(request, "approvals/policies.html", {
                **_listing(request), "may_propose": may_propose, "draft": text,
                "problems": (exc.fields or {}).get("document") or [exc.detail],
                "problem_code": exc.code}, status=400 if exc.status == 400 else exc.status)
        messages.success(request, f"Policy v{version.number} proposed: it binds once its "
                                  "gates approve it.")
        return redirect("policy-version", number=version.number)
    return render(request, "approvals/policies.html", {**_listing(request),
                                                       "may_propose": may_propose})


def _listing(request) -> dict:
    active = services.active_version()
    versions = list(PolicyVersion.objects.select_related("proposed_by", "based_on")
                    .order_by("-number")[:100])
    return {"active": active, "versions": versions,
            "draft": active.document if active else "",
            "may_backtest": may_backtest(request.user)}


@login_required
def policy_version(request, number: int):
    version = get_object_or_404(PolicyVersion.objects.select_related("proposed_by",
                                                                     "based_on"),
                                number=number)
    approvals = list(version.approvals.select_related("approver"))
    pending = services.pending_roles(version) if version.status == "proposed" else {}
    decidable = [(role, GateRole(role).label) for role in pending
                 if services.may_decide_policy(request.user, version, role)[0]]
    base = version.based_on
    return render(request, "approvals/policy_version.html", {
        "version": version, "approvals": approvals, "pending": pending,
        "gates": [(role, GateRole(role).label, count, pending.get(role, 0))
                  for role, count in version.gates.items()],
        "decidable": decidable, "base": base,
        "diff": diff_lines(base.document, version.document) if base else [],
        "is_proposer": version.proposed_by_id == request.user.pk,
    })


@login_required
@require_POST
def policy_decide(request, number: int):
    version = get_object_or_404(PolicyVersion, number=number)
    decision = {"approve": "approved", "reject": "rejected"}.get(request.POST.get("decision"))
    role = request.POST.get("role", "")
    try:
        if decision is None or role not in GateRole.values:
            raise DomainError("choose a gate and approve or reject", code="invalid")
        version = services.policy_decide(actor=request.user, version=version, role=role,
                                         decision=decision,
                                         comment=request.POST.get("comment", "")[:2000])
    except (StepUpRequired, SecondFactorRequired) as exc:
        return stepup_views.answer(request, exc)
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Policy v{version.number}: "
                                  f"{version.get_status_display().lower()}.")
    return redirect("policy-version", number=number)
