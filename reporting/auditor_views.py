"""The auditor's pages: deployment history with the evidence behind each deployment,
the audit trail browser and its exports, and the access review. Auditors and
administrators only (``audit.view_audit_trail``)."""

from __future__ import annotations

from functools import wraps

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from audit.permissions import is_auditor
from audit.trail import audit_record
from core import paging
from reporting import audit_selectors as sel
from reporting import exports


def auditor_required(view):
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not is_auditor(request.user):
            raise PermissionDenied("Only auditors and administrators may see this page.")
        return view(request, *args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------
# Audit trail browser and exports


class EventFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64,
                             help_text='Exact, or a prefix ending in "." such as gate.')
    actor = forms.CharField(required=False, max_length=150,
                            help_text='A username, or "system".')
    object_type = forms.CharField(required=False, max_length=64)
    object_id = forms.CharField(required=False, max_length=64)
    environment = forms.CharField(required=False, max_length=50)
    since = forms.DateTimeField(required=False, help_text="UTC, e.g. 2025-01-31 or "
                                                          "2025-01-31 14:00")
    until = forms.DateTimeField(required=False)
    application = forms.CharField(required=False, max_length=50,
                                  help_text="Its events, releases, changes and deployments.")

    def filters(self) -> sel.EventFilters:
        # Only the fields that parsed; the others are shown as errors and left out.
        data = getattr(self, "cleaned_data", {})
        text = {name: data.get(name) or "" for name in
                ("action", "actor", "object_type", "object_id", "environment", "application")}
        return sel.EventFilters(**text, since=data.get("since"), until=data.get("until"))


def _event_filters(request) -> tuple[EventFilterForm, sel.EventFilters]:
    form = EventFilterForm(request.GET or None)
    form.is_valid()
    return form, form.filters()


@auditor_required
def audit_events(request):
    form, filters = _event_filters(request)
    page = paging.keyset_page(sel.events_matching(filters), paging.position(request),
                              sel.PAGE_SIZE)
    query = paging.query_without_position(request)
    return render(request, "auditor/events.html", {
        "form": form, "filters": filters, "page": page, "query": query,
        "export_query": query, "tab": "events",
    }, status=400 if form.errors else 200)


def _export(request, kind: str):
    form, filters = _event_filters(request)
    if form.errors:
        return HttpResponseBadRequest("Some filters do not parse: "
                                      + "; ".join(f"{k}: {' '.join(v)}"
                                                  for k, v in form.errors.items()),
                                      content_type="text/plain")
    used = {k: v for k, v in getattr(form, "cleaned_data", {}).items() if v}
    with transaction.atomic():
        # SOP 13.1: who took a copy of the trail, and of what.
        audit_record(actor=request.user, action="audit.exported", object_type="auditevent",
                     object_repr=f"audit trail ({kind})",
                     after={"format": kind, "filters": used})
    events = sel.events_matching(filters)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    if kind == "csv":
        response = StreamingHttpResponse(exports.audit_csv(events, style="auditor"),
                                         content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(exports.audit_jsonl(events),
                                         content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{kind}"'
    return response


@auditor_required
def audit_export_csv(request):
    return _export(request, "csv")


@auditor_required
def audit_export_jsonl(request):
    return _export(request, "jsonl")


# ---------------------------------------------------------------------------
# Deployment history and evidence


class DeploymentFilterForm(forms.Form):
    application = forms.CharField(required=False, max_length=50)
    environment = forms.CharField(required=False, max_length=50)
    status = forms.CharField(required=False, max_length=20)
    version = forms.CharField(required=False, max_length=64)
    requester = forms.CharField(required=False, max_length=150)
    approver = forms.CharField(required=False, max_length=150)
    since = forms.DateTimeField(required=False)
    until = forms.DateTimeField(required=False)


@auditor_required
def deployment_history(request):
    from catalog.models import Application, Environment
    from deployments.models import Deployment

    form = DeploymentFilterForm(request.GET or None)
    form.is_valid()
    data = getattr(form, "cleaned_data", {})
    filters = sel.DeploymentFilters(**{k: v for k, v in data.items() if v})
    page = paging.keyset_page(sel.deployment_history(filters), paging.position(request),
                              sel.PAGE_SIZE)
    changes = sel.changes_by_id(d.change_id for d in page.rows)
    compliance = sel.compliance_for(page.rows, changes=changes, evidence=False)
    rows = [{"deployment": d, "change": changes.get(d.change_id),
             "compliance": compliance[d.pk]} for d in page.rows]
    return render(request, "auditor/deployments.html", {
        "form": form, "rows": rows, "page": page, "tab": "deployments",
        "query": paging.query_without_position(request),
        "applications": Application.objects.order_by("name"),
        "environments": Environment.objects.order_by("order"),
        "statuses": Deployment.Status.choices,
    }, status=400 if form.errors else 200)


def _deployment_or_404(pk: int):
    from deployments.models import Deployment

    try:
        return Deployment.objects.select_related(
            "application", "environment", "release", "started_by").get(pk=pk)
    except Deployment.DoesNotExist:
        raise Http404("no such deployment") from None


@auditor_required
def deployment_evidence(request, pk: int):
    deployment = _deployment_or_404(pk)
    context = sel.evidence(deployment)
    context["tab"] = "deployments"
    context["all_intact"] = all(e["intact"] for e in context["events"])
    return render(request, "auditor/evidence.html", context)


# ---------------------------------------------------------------------------
# Access review


@auditor_required
def access_review(request):
    return render(request, "auditor/access.html", {
        "rows": sel.access_review(days=90), "days": 90, "tab": "access",
        "generated_at": timezone.now(),
    })


# ---------------------------------------------------------------------------
# Evidence bundles and the offline verifier (docs/audit.md)


def _bundle_response(request, scope, name: str):
    from reporting import bundles

    plan = bundles.plan_bundle(scope)
    bundles.bundle_download_record(actor=request.user, plan=plan)
    response = StreamingHttpResponse(
        bundles.bundle_stream(plan, generated_by=request.user.get_username()),
        content_type="application/zip")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.zip"'
    return response


@auditor_required
def deployment_bundle(request, pk: int):
    from reporting import bundles

    deployment = _deployment_or_404(pk)
    return _bundle_response(request, bundles.deployment_scope(deployment),
                            f"evidence-deployment-{deployment.pk}")


@auditor_required
def audit_bundle(request):
    from reporting import bundles

    form, filters = _event_filters(request)
    if form.errors:
        return HttpResponseBadRequest("Some filters do not parse: "
                                      + "; ".join(f"{k}: {' '.join(v)}"
                                                  for k, v in form.errors.items()),
                                      content_type="text/plain")
    used = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in getattr(form, "cleaned_data", {}).items() if v}
    return _bundle_response(request, bundles.trail_scope(sel.events_matching(filters), used),
                            "evidence-audit-trail")


@auditor_required
def verifier_download(request):
    from django.http import FileResponse

    from reporting import bundles

    return FileResponse(bundles.VERIFIER.open("rb"), as_attachment=True,
                        filename="verify_bundle.py", content_type="text/x-python")

@auditor_required
def access_review_export_csv(request):
    """The access review as CSV, with each person's second factors (SOP 10.2, 13.1)."""
    with transaction.atomic():
        # SOP 13.1: who took a copy of the access review.
        audit_record(actor=request.user, action="access_review.exported", object_type="user",
                     object_repr="access review (csv)", after={"format": "csv"})
    rows = sel.access_review(days=90)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(exports.access_csv(rows, days=90),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="access-review-{stamp}.csv"'
    return response



# ---------------------------------------------------------------------------
# Policy versions, and a past decision re-checked against the version it names
# (docs/policies.md)


@auditor_required
def policy_versions(request):
    from approvals.models import PolicyVersion
    from approvals.policy_checks import policy_events, recheck_events

    versions = list(PolicyVersion.objects.select_related("proposed_by")
                    .prefetch_related("approvals__approver").order_by("-number")[:200])
    raw = (request.GET.get("change") or "").strip().upper().removeprefix("CR-")
    change_id = int(raw) if raw.isdigit() and len(raw) < 12 else None
    results = recheck_events(policy_events(change_id=change_id)) if change_id else None
    return render(request, "auditor/policies.html", {
        "versions": versions, "tab": "policies", "change_id": change_id,
        "asked": bool(raw), "results": results,
        "all_ok": results is not None and all(r.ok for r in results),
    })
