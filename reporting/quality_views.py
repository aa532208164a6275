"""The quality of approvals for auditors and administrators (``audit.view_audit_trail``):
how fast, how often unread and between whom approvals are given (docs/cab.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.db import transaction
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render

from audit.trail import audit_record
from core import clock
from reporting import audit_selectors as sel
from reporting import exports
from reporting.audit_selectors import quality
from reporting.auditor_views import auditor_required

DEFAULT_DAYS = 90


class PeriodForm(forms.Form):
    """``from`` and ``to``, days in UTC, both included (Python keeps ``from`` for itself,
    so the fields are added by name)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["from"] = forms.DateField(required=False, label="From",
                                              widget=forms.DateInput(attrs={"type": "date"},
                                                                     format="%Y-%m-%d"))
        self.fields["to"] = forms.DateField(required=False, label="To",
                                            widget=forms.DateInput(attrs={"type": "date"},
                                                                     format="%Y-%m-%d"))

    def clean(self):
        data = super().clean()
        if data.get("from") and data.get("to") and data["from"] > data["to"]:
            raise forms.ValidationError("The period ends before it starts.")
        return data


def _period(request) -> tuple[PeriodForm, date, date]:
    """The days asked for; by default the last 90 days, today included."""
    form = PeriodForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    last = data.get("to") or clock.now().astimezone(UTC).date()
    first = data.get("from") or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        first = last - timedelta(days=DEFAULT_DAYS - 1)
    return form, first, last


def _figures(first: date, last: date) -> sel.ApprovalQuality:
    return sel.approval_quality(
        since=datetime.combine(first, time.min, tzinfo=UTC),
        until=datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC))


@auditor_required
def approval_quality(request):
    form, first, last = _period(request)
    figures = _figures(first, last)
    if not form.is_bound:
        form = PeriodForm(initial={"from": first, "to": last})  # show the default period
    return render(request, "auditor/approval_quality.html", {
        "form": form, "first": first, "last": last, "figures": figures,
        "gates": [(g, figures.concentration.get(g.role)) for g in figures.gates],
        "fast_seconds": quality.FAST_SECONDS, "flag_percent": round(quality.FLAG_SHARE * 100),
        "sop": quality.SOP, "query": request.GET.urlencode(), "tab": "quality",
    }, status=400 if form.errors else 200)


@auditor_required
def approval_quality_csv(request):
    """The page's figures as CSV, one row per approver and gate."""
    form, first, last = _period(request)
    if form.errors:
        return HttpResponseBadRequest("The period does not parse: " + "; ".join(
            " ".join(v) for v in form.errors.values()), content_type="text/plain")
    figures = _figures(first, last)
    with transaction.atomic():
        # SOP 13.1: who took a copy of the figures, for which period.
        audit_record(actor=request.user, action="approval_quality.exported",
                     object_type="approval", object_repr="approval quality (csv)",
                     after={"format": "csv", "from": first.isoformat(),
                            "to": last.isoformat()})
    response = StreamingHttpResponse(exports.approval_quality_csv(figures),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (f'attachment; filename="approval-quality-'
                                       f'{first:%Y%m%d}-{last:%Y%m%d}.csv"')
    return response
