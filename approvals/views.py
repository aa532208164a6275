"""Pages of the approval workflow: inbox, change request form, change page."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from approvals import selectors, services
from approvals.models import ChangeRequest, ChangeType, GateRole, Strategy
from deployments.models import Deployment, Environment, Release
from portal.errors import DomainError
from portal.models import AuditEvent
from portal.permissions import environment_permissions


class ChangeRequestForm(forms.Form):
    release = forms.ModelChoiceField(
        queryset=Release.objects.select_related("application").order_by(
            "application__name", "-created_at"),
        help_text="The application version to deploy.",
    )
    environment = forms.ModelChoiceField(queryset=Environment.objects.order_by("order"),
                                         to_field_name="slug")
    change_type = forms.ChoiceField(choices=ChangeType.choices, initial=ChangeType.STANDARD)
    strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.ALL_AT_ONCE)
    risk = forms.ChoiceField(choices=[("", "—"), ("low", "Low"), ("medium", "Medium"),
                                      ("high", "High")], required=False)
    impact = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    rollback_plan = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    help_text="How to return to the previous version (SOP 8.2).")
    on_call = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        to_field_name="username", required=False, help_text="On-call engineer for this change.")


def _apply_domain_error(form: forms.Form, exc: DomainError) -> None:
    if exc.fields:
        for name, errors in exc.fields.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc.detail)


@login_required
def change_new(request):
    initial = {}
    if request.GET.get("release", "").isdigit():
        initial["release"] = request.GET["release"]
    form = ChangeRequestForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            change = services.change_request_create(actor=request.user, **data)
        except DomainError as exc:
            _apply_domain_error(form, exc)
        else:
            messages.success(request, f"{change.reference} submitted for approval.")
            return redirect("change-detail", pk=change.pk)
    return render(request, "approvals/change_form.html", {"form": form},
                  status=400 if form.errors else 200)


@login_required
def change_list(request):
    changes = selectors.changes_visible_to(request.user).order_by("-created_at")[:100]
    return render(request, "approvals/change_list.html", {"changes": changes})


def _change_context(request, change: ChangeRequest) -> dict:
    held = environment_permissions(request.user).get(change.environment_id, set())
    deployment = None
    if change.latest_deployment_id:
        deployment = (Deployment.objects.select_related("release")
                      .prefetch_related("steps").get(pk=change.latest_deployment_id))
    decided = {a.approver_id for g in change.gates.all() for a in g.approvals.all()}
    can_decide = {
        g.role for g in change.gates.all()
        if GateRole(g.role).permission in held and g.status == "pending"
        and change.status == ChangeRequest.Status.PENDING_APPROVAL
        and change.requested_by_id != request.user.pk and request.user.pk not in decided
    }
    timeline = AuditEvent.objects.filter(object_type="changerequest",
                                         object_id=str(change.pk)).order_by("id")
    return {
        "change": change,
        "blockers": selectors.change_blockers(change),
        "deployment": deployment,
        "can_deploy": "deploy" in held,
        "can_decide": can_decide,
        "timeline": timeline,
    }


@login_required
def change_detail(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    return render(request, "approvals/change_detail.html", _change_context(request, change))


@login_required
@require_POST
def gate_decide(request, pk: int, role: str):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    decision = request.POST.get("decision")
    comment = request.POST.get("comment", "")
    error = None
    try:
        if decision == "reject":
            services.gate_reject(actor=request.user, change=change, role=role, comment=comment)
        elif decision == "approve":
            services.gate_approve(actor=request.user, change=change, role=role, comment=comment)
        else:
            error = "Choose approve or reject."
    except DomainError as exc:
        error = exc.detail
    change = selectors.change_detail_queryset().get(pk=pk)
    gate = next((g for g in change.gates.all() if g.role == role), None)
    if request.htmx:
        return render(request, "approvals/_decision_result.html", {
            "change": change, "gate": gate, "error": error, "role": role,
        }, status=200)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Your decision on {change.reference} is recorded.")
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()}):
        return redirect(next_url)
    return redirect("change-detail", pk=pk)


@login_required
@require_POST
def change_deploy(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    try:
        deployment = services.change_request_deploy(actor=request.user, change=change)
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Deployment #{deployment.pk} queued.")
    return redirect("change-detail", pk=pk)


@login_required
@require_POST
def change_cancel(request, pk: int):
    change = get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)
    try:
        services.change_request_cancel(actor=request.user, change=change,
                                       reason=request.POST.get("reason", "")[:2000])
    except DomainError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"{change.reference} cancelled.")
    return redirect("change-detail", pk=pk)


@login_required
def inbox(request):
    environment = request.GET.get("environment", "")
    change_type = request.GET.get("change_type", "")
    gates = list(selectors.inbox_gates(request.user, environment=environment,
                                       change_type=change_type)[:200])
    return render(request, "approvals/inbox.html", {
        "gates": gates,
        "environments": Environment.objects.order_by("order"),
        "change_types": ChangeType.choices,
        "selected": {"environment": environment, "change_type": change_type},
    })
