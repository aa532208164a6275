"""DORA metrics (SOP 12.1) as an API and a page of server-rendered SVG charts, and the
deployment dashboard (SOP 4.1 "update deployment dashboard").

The dashboard shows changes as well as deployments, so it reads the approvals app;
like ``portal/urls.py`` it sits above both apps and is imported by nothing.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from catalog.models import Application, Environment
from catalog.selectors import visible_environment_ids
from core.api import ApiView, BoundedDateTimeField, query_values
from deployments import selectors
from deployments.models import Deployment
from reporting import metrics

PERIODS = ["month", "week", "day"]
MAX_DAYS = 3 * 366


# --- query -------------------------------------------------------------------------


def _validate_range(attrs: dict) -> dict:
    until = attrs.get("until") or timezone.now()
    since = attrs.get("since")
    if since is None:
        since, _ = metrics.default_range(until)
    # Any two dates the schema allows are answered (a rule between two values is beyond
    # what a schema states): a range given the other way round is the same range, and
    # one longer than the figures cover is cut to its end; the answer's since and until
    # say what was counted.
    since, until = min(since, until), max(since, until)
    longest = timedelta(days=92 if attrs.get("period") == "day" else MAX_DAYS)
    since = max(since, until - longest)
    attrs["since"], attrs["until"] = since, until
    return attrs


class DoraQuerySerializer(serializers.Serializer):
    environment = serializers.SlugField(
        default="production", help_text="An environment slug, or 'all'.")
    application = serializers.SlugField(required=False, help_text="Default: every application.")
    since = BoundedDateTimeField(required=False,
                                      help_text="Default: the start of the month five months ago.")
    until = BoundedDateTimeField(required=False, help_text="Default: now.")
    period = serializers.ChoiceField(choices=PERIODS, default="month")

    def validate_environment(self, value):
        if value != "all" and not Environment.objects.filter(slug=value).exists():
            raise serializers.ValidationError("No such environment.", code="does_not_exist")
        return value

    def validate_application(self, value):
        if not Application.objects.filter(slug=value).exists():
            raise serializers.ValidationError("No such application.", code="does_not_exist")
        return value

    def validate(self, attrs):
        return _validate_range(attrs)


class BandsSerializer(serializers.Serializer):
    deployment_frequency = serializers.ChoiceField(choices=metrics.BANDS, allow_null=True)
    lead_time = serializers.ChoiceField(choices=metrics.BANDS, allow_null=True)
    time_to_restore = serializers.ChoiceField(choices=metrics.BANDS, allow_null=True)
    change_failure_rate = serializers.ChoiceField(choices=metrics.BANDS, allow_null=True)


class DoraFiguresSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    deployments = serializers.IntegerField(
        help_text="Deployments that ended (succeeded, failed or rolled back); not rollbacks.")
    succeeded = serializers.IntegerField(help_text="Completed: every step succeeded.")
    failed = serializers.IntegerField(help_text="Failed or rolled back.")
    restored = serializers.IntegerField(help_text="Failures whose service was restored.")
    deployment_frequency_per_day = serializers.FloatField()
    deployments_per_week = serializers.FloatField()
    lead_time_hours = serializers.FloatField(
        allow_null=True, help_text="Median, commit to the end of the completed deployment.")
    mttr_hours = serializers.FloatField(
        allow_null=True, help_text="Mean, a failure's end to the next success there.")
    change_failure_rate = serializers.FloatField(allow_null=True, help_text="0 to 1.")
    success_rate = serializers.FloatField(allow_null=True, help_text="0 to 1.")
    bands = BandsSerializer(help_text="DORA performance band of each figure.")


class DoraApplicationSerializer(DoraFiguresSerializer):
    application = serializers.CharField()


class DoraOutSerializer(serializers.Serializer):
    environment = serializers.CharField()
    application = serializers.CharField(allow_null=True)
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    period = serializers.CharField()
    totals = DoraFiguresSerializer()
    periods = DoraFiguresSerializer(many=True)
    by_application = DoraApplicationSerializer(many=True)


def dora_for(user, *, environment: str, application: str | None, since: datetime,
             until: datetime, period: str) -> dict:
    """The figures over the deployments ``user`` may see."""
    qs = selectors.deployments_visible_to(user)
    environment_ids = visible_environment_ids(user)
    if environment != "all":
        qs = qs.filter(environment__slug=environment)
        chosen = list(Environment.objects.filter(slug=environment).values_list("pk", flat=True))
        environment_ids = [pk for pk in chosen
                           if environment_ids is None or pk in environment_ids]
    if application:
        qs = qs.filter(application__slug=application)
    names = dict(Application.objects.values_list("pk", "slug"))
    application_id = next((pk for pk, slug in names.items() if slug == application), None)
    if application and application_id is None:
        environment_ids = []  # no such application: nothing to count
    # Whole days from the daily roll-ups (docs/metrics.md, "Daily roll-ups").
    rolled = {"environment_ids": environment_ids, "application_id": application_id}
    body = metrics.dora(qs, since=since, until=until, period=period, applications=names,
                        rolled=rolled)
    return {"environment": environment, "application": application or None, **body}


class DoraMetrics(ApiView):
    @extend_schema(parameters=[DoraQuerySerializer], responses={200: DoraOutSerializer},
                   summary="DORA metrics: deployment frequency, lead time, time to restore, "
                           "change failure rate and success rate by period, with bands")
    def get(self, request):
        query = DoraQuerySerializer(data=query_values(request))
        query.is_valid(raise_exception=True)
        params = query.validated_data
        body = dora_for(request.user, environment=params["environment"],
                        application=params.get("application"), since=params["since"],
                        until=params["until"], period=params["period"])
        return Response(DoraOutSerializer(body).data)


# --- SVG charts ----------------------------------------------------------------------

CHART_W, CHART_H = 560, 220
PAD_L, PAD_R, PAD_T, PAD_B = 52, 12, 14, 34


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * 0.9999)


def _period_label(start: datetime, period: str) -> str:
    local = timezone.localtime(start)
    return local.strftime("%b %Y") if period == "month" else local.strftime("%d %b")


def bar_chart(*, key: str, title: str, periods: list[dict], period: str, series: list[dict],
              fmt, thresholds: list[tuple[float, str]] = (), ceiling: float | None = None
              ) -> dict:
    """Geometry of a (stacked) bar chart: the template only draws it.

    ``series`` is [{"field": ..., "label": ..., "css": ...}] stacked bottom up;
    ``thresholds`` are horizontal lines (DORA band limits) with their labels.
    """
    totals = [sum((p[s["field"]] or 0) for s in series) for p in periods]
    top = ceiling or _nice_max(max(totals + [t for t, _ in thresholds if t] + [0]) * 1.08)
    inner_w = CHART_W - PAD_L - PAD_R
    inner_h = CHART_H - PAD_T - PAD_B
    slot = inner_w / max(len(periods), 1)
    bar_w = max(min(slot * 0.62, 56), 2)

    def y_of(value: float) -> float:
        return PAD_T + inner_h - min(value, top) / top * inner_h

    bars = []
    for index, p in enumerate(periods):
        x = PAD_L + slot * index + (slot - bar_w) / 2
        base = 0.0
        segments = []
        for s in series:
            value = p[s["field"]]
            if value:
                y_top, y_bottom = y_of(base + value), y_of(base)
                segments.append({"y": round(y_top, 1), "h": round(max(y_bottom - y_top, 0.5), 1),
                                 "css": s["css"], "title": f"{s['label']}: {fmt(value)}"})
                base += value
        label = _period_label(p["start"], period)
        empty = all(p[s["field"]] is None for s in series)
        bars.append({"x": round(x, 1), "w": round(bar_w, 1), "cx": round(x + bar_w / 2, 1),
                     "label": label, "segments": segments,
                     "value": "no data" if empty else fmt(totals[index]),
                     "value_y": round(y_of(totals[index]) - 4, 1),
                     "show_label": len(periods) <= 12 or index % max(len(periods) // 12, 1) == 0})
    ticks = [{"y": round(y_of(top * i / 4), 1), "label": fmt(top * i / 4)} for i in range(5)]
    lines = [{"y": round(y_of(value), 1), "label": label} for value, label in thresholds
             if value <= top]
    return {"key": key, "title": title, "w": CHART_W, "h": CHART_H, "bars": bars,
            "ticks": ticks, "thresholds": lines, "x0": PAD_L, "x1": CHART_W - PAD_R,
            "y0": PAD_T + inner_h, "legend": series, "axis_y": CHART_H - 12}


def _hours(value: float) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 60:.0f} min"
    if value < 48:
        return f"{value:.1f} h"
    return f"{value / 24:.1f} d"


def _percent(value: float) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _count(value: float) -> str:
    return "–" if value is None else (f"{value:.0f}" if float(value).is_integer()
                                      else f"{value:.1f}")


def charts_for(body: dict) -> list[dict]:
    periods = [dict(p, ok=p["deployments"] - p["failed"]) for p in body["periods"]]
    period = body["period"]
    return [
        bar_chart(key="frequency", title="Deployments", periods=periods, period=period,
                  fmt=_count, series=[
                      {"field": "ok", "label": "Completed", "css": "ok"},
                      {"field": "failed", "label": "Failed or rolled back", "css": "bad"}]),
        bar_chart(key="lead-time", title="Lead time for changes (median)", periods=periods,
                  period=period, fmt=_hours,
                  series=[{"field": "lead_time_hours", "label": "Lead time", "css": "info"}],
                  thresholds=[(24, "elite < 1 day"), (24 * 7, "high < 1 week")]),
        bar_chart(key="mttr", title="Time to restore service (mean)", periods=periods,
                  period=period, fmt=_hours,
                  series=[{"field": "mttr_hours", "label": "Time to restore", "css": "warn"}],
                  thresholds=[(1, "elite < 1 h"), (24, "high < 1 day")]),
        bar_chart(key="failure-rate", title="Change failure rate", periods=periods,
                  period=period, fmt=_percent, ceiling=None,
                  series=[{"field": "change_failure_rate", "label": "Change failure rate",
                           "css": "bad"}],
                  thresholds=[(0.05, "elite ≤ 5%"), (0.10, "high ≤ 10%"),
                              (0.15, "medium ≤ 15%")]),
        bar_chart(key="success-rate", title="Deployment success rate", periods=periods,
                  period=period, fmt=_percent, ceiling=1.0,
                  series=[{"field": "success_rate", "label": "Success rate", "css": "ok"}]),
    ]


def headline(body: dict) -> list[dict]:
    totals = body["totals"]
    bands = totals["bands"]
    per_week = totals["deployments_per_week"]
    return [
        {"key": "deployment_frequency", "title": "Deployment frequency",
         "value": f"{per_week:.1f} / week" if totals["deployments"] else "–",
         "band": bands["deployment_frequency"]},
        {"key": "lead_time", "title": "Lead time for changes",
         "value": _hours(totals["lead_time_hours"]), "band": bands["lead_time"]},
        {"key": "time_to_restore", "title": "Time to restore service",
         "value": _hours(totals["mttr_hours"]), "band": bands["time_to_restore"]},
        {"key": "change_failure_rate", "title": "Change failure rate",
         "value": _percent(totals["change_failure_rate"]),
         "band": bands["change_failure_rate"]},
        {"key": "success_rate", "title": "Deployment success rate",
         "value": _percent(totals["success_rate"]), "band": None},
    ]


class MetricsFilterForm(forms.Form):
    environment = forms.ChoiceField(required=False)
    application = forms.ChoiceField(required=False)
    months = forms.TypedChoiceField(coerce=int, required=False, initial=6,
                                    choices=[(3, "3 months"), (6, "6 months"),
                                             (12, "12 months"), (24, "24 months")])

    def __init__(self, *args, environments, applications, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment"].choices = (
            [(e.slug, e.name) for e in environments] + [("all", "All environments")])
        self.fields["application"].choices = (
            [("", "All applications")] + [(a.slug, a.name) for a in applications])


@login_required
def metrics_page(request):
    environments = list(Environment.objects.order_by("order"))
    applications = list(Application.objects.order_by("name"))
    default_env = "production" if any(e.slug == "production" for e in environments) else "all"
    form = MetricsFilterForm(request.GET or None, environments=environments,
                             applications=applications,
                             initial={"environment": default_env, "months": 6})
    environment, application, months = default_env, None, 6
    if form.is_bound and form.is_valid():
        environment = form.cleaned_data["environment"] or default_env
        application = form.cleaned_data["application"] or None
        months = form.cleaned_data["months"] or 6
    since, until = metrics.default_range(months=months)
    body = dora_for(request.user, environment=environment, application=application,
                    since=since, until=until, period="month")
    env_name = next((e.name for e in environments if e.slug == environment),
                    "All environments")
    return render(request, "metrics/page.html", {
        "form": form, "body": body, "charts": charts_for(body), "headline": headline(body),
        "environment": environment, "environment_name": env_name, "application": application,
        "months": months, "band_labels": metrics.BAND_LABELS,
        "by_application": [dict(row, headline=headline({"totals": row}))
                           for row in body["by_application"]],
    }, status=400 if form.is_bound and form.errors else 200)


# --- dashboard -----------------------------------------------------------------------


# The waiting changes a dashboard cell lists; the rest are counted.
WAITING_PER_CELL = 3


class _Board:
    """The dashboard's grid: one row per application, one cell per visible environment."""

    def __init__(self, environments: list) -> None:
        self.environments = environments
        self.apps: dict[int, dict] = {}

    def cell(self, application, environment_id: int) -> dict | None:
        entry = self.apps.get(application.pk)
        if entry is None:
            entry = self.apps[application.pk] = {
                "application": application,
                "cells": {e.pk: {"environment": e, "running": None, "last": None,
                                 "in_flight": [], "waiting": [], "more_waiting": 0}
                          for e in self.environments}}
        return entry["cells"].get(environment_id)

    def rows(self) -> list[dict]:
        rows = sorted(self.apps.values(), key=lambda entry: entry["application"].name.lower())
        for entry in rows:
            entry["columns"] = [entry["cells"][e.pk] for e in self.environments]
        return rows


def _place_deployments(board: _Board, user) -> None:
    """The version running in each cell (the latest successful run; a rollback run puts
    the older release back, so it counts too), a last run that did not succeed, and
    what is in flight."""
    deployments = selectors.deployments_visible_to(user)
    # The latest per application and environment by an index look-up per pair, never
    # a scan of the history (docs/benchmarks.md, "Pages at scale and throughput").
    env_ids = [e.pk for e in board.environments]
    running_ids = selectors.latest_per_application_environment(
        environment_ids=env_ids, statuses=[Deployment.Status.SUCCEEDED], by="finished")
    latest_ids = selectors.latest_per_application_environment(
        environment_ids=env_ids, exclude_statuses=Deployment.ACTIVE, by="created")
    shown = {d.pk: d for d in deployments.filter(
        pk__in={pk for pk, _ in (*running_ids.values(), *latest_ids.values())})}
    running = [shown[pk] for pk, _ in running_ids.values() if pk in shown]
    latest = [shown[pk] for pk, _ in latest_ids.values() if pk in shown]
    in_flight = deployments.filter(status__in=Deployment.ACTIVE).order_by("created_at")
    for deployment in running:
        cell = board.cell(deployment.application, deployment.environment_id)
        if cell is not None:
            cell["running"] = deployment
    for deployment in latest:
        cell = board.cell(deployment.application, deployment.environment_id)
        if cell is not None and deployment.status != Deployment.Status.SUCCEEDED:
            cell["last"] = deployment
    for deployment in in_flight:
        cell = board.cell(deployment.application, deployment.environment_id)
        if cell is not None:
            cell["in_flight"].append(deployment)


def _waiting_for_approval(change, deciders: dict) -> list[dict]:
    """Per pending gate: who may still decide it (``approvals.eligibility``, as the inbox,
    the change page and the API answer it) and how many approvals it needs."""
    from approvals.models import Gate

    who = []
    for gate in change.gates.all():
        if gate.status != Gate.Status.PENDING:
            continue
        decided = sum(1 for a in gate.approvals.all() if a.withdrawn_at is None)
        who.append({"gate": gate.get_role_display(),
                    "people": [p.username for p in deciders.get(gate.pk, ())],
                    "needed": gate.required - decided})
    return who


def _place_waiting_changes(board: _Board, user) -> None:
    """Changes waiting for approval, their time or someone to deploy them, and for whom:
    the oldest few per cell, with how many more wait there."""
    from approvals.models import ChangeRequest
    from approvals.selectors import candidate_facts, gate_deciders, waiting_changes

    Status = ChangeRequest.Status
    people = candidate_facts([e.pk for e in board.environments])
    changes = waiting_changes(user, per_place=WAITING_PER_CELL)
    deciders = gate_deciders([c for c in changes if c.status == Status.PENDING_APPROVAL],
                             people=people)
    by_name = sorted(people.values(), key=lambda p: p.username)
    for change in changes:
        cell = board.cell(change.release.application, change.environment_id)
        if cell is None:
            continue
        cell["more_waiting"] = change.waiting_here - WAITING_PER_CELL
        if change.status == Status.PENDING_APPROVAL:
            cell["waiting"].append({"change": change, "for": "approval",
                                    "gates": _waiting_for_approval(change, deciders)})
        elif change.status == Status.SCHEDULED:
            cell["waiting"].append({"change": change, "for": "schedule",
                                    "at": change.scheduled_for})
        else:
            cell["waiting"].append({"change": change, "for": "deploy", "people": [
                p.username for p in by_name if p.holds("deploy", change.environment_id)]})


def dashboard_data(user) -> dict:
    """Per application: the version running in each environment, what is in flight and
    what it waits for, over what ``user`` may see, in a constant number of queries."""
    env_ids = visible_environment_ids(user)
    visible_envs = [e for e in Environment.objects.order_by("order")
                    if env_ids is None or e.pk in env_ids]
    board = _Board(visible_envs)
    _place_deployments(board, user)
    _place_waiting_changes(board, user)
    return {"environments": visible_envs, "rows": board.rows(), "now": timezone.now()}


@login_required
def dashboard(request):
    context = dashboard_data(request.user)
    # The deployment queues: what waits behind a running deployment, and for which.
    context["queue"] = selectors.queued_deployments(visible_environment_ids(request.user))
    return render(request, "dashboard/page.html", context)


@login_required
def dashboard_live(request):
    """The part of the dashboard that changes, polled by HTMX every few seconds."""
    return render(request, "dashboard/_board.html", dashboard_data(request.user))
