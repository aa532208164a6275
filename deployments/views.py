"""Pages of execution: release registration, deployment history, the live deployment view."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from catalog import services as catalog_services
from catalog.models import SEMVER, SHA256, Application, Environment
from catalog.permissions import has_env_perm
from core import paging
from core.errors import DomainError, Refused, SecondFactorRequired, StepUpRequired
from deployments import selectors, services
from deployments.models import Deployment
from identity import stepup_views

HISTORY_PAGE_SIZE = 50


class ReleaseForm(forms.Form):
    application = forms.ModelChoiceField(queryset=Application.objects.order_by("name"),
                                         to_field_name="slug")
    version = forms.CharField(max_length=64, validators=[SEMVER],
                              help_text="Semantic version, e.g. 1.4.0.")
    commit_sha = forms.RegexField(
        regex=r"^[0-9a-fA-F]{7,40}$", required=False,
        error_messages={"invalid": "A commit SHA is 7-40 hex characters."})
    artifact_url = forms.CharField(max_length=500, required=False)
    artifact_sha256 = forms.CharField(max_length=64, required=False, validators=[SHA256])
    notes = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                            label="Release notes")


@login_required
def release_new(request):
    form = ReleaseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            release, created = catalog_services.release_register(actor=request.user,
                                                                 **form.cleaned_data)
        except Refused as exc:
            form.add_error(None, exc.detail)
        except DomainError as exc:
            if exc.fields:
                for name, errors in exc.fields.items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                form.add_error("version", exc.detail)
        else:
            if created:
                messages.success(request, f"Release {release} registered.")
            else:
                messages.info(request, f"Release {release} was already registered.")
            return redirect(f"/changes/new/?release={release.pk}")
    return render(request, "deployments/release_form.html", {"form": form},
                  status=400 if form.errors else 200)


@login_required
def deployment_history(request):
    qs = selectors.deployments_visible_to(request.user)
    filters = {k: request.GET.get(k, "") for k in ("application", "environment", "status")}
    if filters["application"]:
        qs = qs.filter(application__slug=filters["application"])
    if filters["environment"]:
        qs = qs.filter(environment__slug=filters["environment"])
    if filters["status"] in Deployment.Status.values:
        qs = qs.filter(status=filters["status"])
    page = paging.keyset_page(qs, paging.position(request), HISTORY_PAGE_SIZE)
    return render(request, "deployments/history.html", {
        "deployments": page.rows,
        "page": page,
        "query": paging.query_without_position(request),
        "filters": filters,
        "applications": Application.objects.order_by("name"),
        "environments": Environment.objects.order_by("order"),
        "statuses": Deployment.Status.choices,
    })


def _deployment(request, pk: int) -> Deployment:
    return get_object_or_404(
        selectors.deployments_visible_to(request.user)
        .select_related("rolled_back_deployment__release")
        .prefetch_related("steps__target"), pk=pk
    )


def _engine_context(request, deployment: Deployment) -> dict:
    """Targets, verdicts and the actions this user may take: a fixed number of queries."""
    may_rollback = has_env_perm(request.user, "rollback", deployment.environment)
    may_operate = services.may_operate(request.user, deployment.environment)
    return {
        "targets": selectors.target_progress(deployment),
        "verdicts": selectors.deployment_verdicts(deployment),
        "rollbacks": selectors.related_rollbacks(deployment),
        "can_cancel": may_operate and deployment.status in (Deployment.Status.QUEUED,
                                                          Deployment.Status.RUNNING),
        "can_rollback": may_rollback and deployment.status in (
            Deployment.Status.RUNNING, Deployment.Status.SUCCEEDED, Deployment.Status.FAILED,
            Deployment.Status.CANCELLED, Deployment.Status.NEEDS_ATTENTION),
        # An interrupted step that is not safe to repeat: on-call decides.
        "can_decide": may_operate
        and deployment.status == Deployment.Status.NEEDS_ATTENTION,
    }


@login_required
def deployment_detail(request, pk: int):
    deployment = _deployment(request, pk)
    return render(request, "deployments/detail.html", {
        "deployment": deployment,
        "log": list(deployment.log_lines.order_by("-seq")[:200])[::-1],
        **_engine_context(request, deployment),
    })


@login_required
def deployment_engine(request, pk: int):
    """Per-target progress, health verdicts and actions, polled by HTMX."""
    deployment = _deployment(request, pk)
    return render(request, "deployments/_engine.html", {
        "deployment": deployment, **_engine_context(request, deployment)})


@login_required
@require_POST
def deployment_rollback(request, pk: int):
    deployment = _deployment(request, pk)
    try:
        rollback = services.deployment_rollback(actor=request.user, deployment=deployment,
                                                reason=request.POST.get("reason", ""))
    except (StepUpRequired, SecondFactorRequired) as exc:
        return stepup_views.answer(request, exc)
    except DomainError as exc:
        messages.error(request, f"Not rolled back: {exc.detail}")
        return redirect("deployment-detail", pk=deployment.pk)
    messages.success(request, f"Rolling back to {rollback.release.version}.")
    return redirect("deployment-detail", pk=rollback.pk)


@login_required
@require_POST
def deployment_cancel(request, pk: int):
    deployment = _deployment(request, pk)
    try:
        services.deployment_cancel(actor=request.user, deployment=deployment,
                                   reason=request.POST.get("reason", "").strip()
                                   or f"cancelled by {request.user.get_username()}")
    except DomainError as exc:
        messages.error(request, f"Not cancelled: {exc.detail}")
    else:
        messages.success(request, "Cancelled: the deployment stops before its next step.")
    return redirect("deployment-detail", pk=deployment.pk)


@login_required
def deployment_progress(request, pk: int):
    """The live part of a deployment (steps, progress, log tail), polled by HTMX."""
    deployment = _deployment(request, pk)
    return render(request, "deployments/_progress.html", {
        "deployment": deployment,
        "log": list(deployment.log_lines.order_by("-seq")[:200])[::-1],
    })


def _step_decision(request, pk: int, decide, refused: str, done: str):
    deployment = _deployment(request, pk)
    # Production: asked for the second factor, then posted again with the reason.
    return stepup_views.page_action(
        request, lambda: decide(actor=request.user, deployment=deployment,
                                reason=request.POST.get("reason", "")),
        done=done, refused=refused, back=reverse("deployment-detail", args=[deployment.pk]))


@login_required
@require_POST
def deployment_retry_step(request, pk: int):
    return _step_decision(request, pk, services.deployment_retry_step, "Not retried",
                          "The interrupted step runs again, then the rest.")


@login_required
@require_POST
def deployment_mark_step_done(request, pk: int):
    return _step_decision(request, pk, services.deployment_mark_step_done, "Not marked done",
                          "The interrupted step is marked done; the rest runs.")
