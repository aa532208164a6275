"""REST API v1: environments, applications, releases, deployments, rollback, DORA metrics
(DESIGN.md section 7)."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta

import django_filters
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from deployments import selectors, services
from deployments.models import (
    Application,
    Deployment,
    DeploymentLogLine,
    DeploymentStep,
    Environment,
    Release,
)
from portal.api import DEPLOY, REQUEST, ApiMixin, ApiView, DateTimeFilter
from portal.errors import Conflict, Refused
from portal.idempotency import idempotent
from portal.permissions import environment_permissions


class EnvironmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Environment
        fields = ["slug", "name", "order", "locked", "lock_reason"]


class ApplicationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Application
        fields = ["slug", "name", "repository_url", "team"]


class ReleaseOutSerializer(serializers.ModelSerializer):
    application = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    checks = serializers.DictField(
        child=serializers.DictField(), read_only=True,
        help_text="Reported CI checks by name: {status, url, summary, reported_at, ...}.")
    authors = serializers.ListField(child=serializers.CharField(), read_only=True)
    mergers = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Release
        fields = ["id", "application", "version", "artifact_url", "artifact_sha256",
                  "commit_sha", "committed_at", "notes", "checks", "authors", "mergers",
                  "created_at"]


class ReleaseInSerializer(serializers.Serializer):
    application = serializers.SlugRelatedField(slug_field="slug",
                                               queryset=Application.objects.all())
    version = serializers.CharField(max_length=64, validators=Release._meta.get_field(
        "version").validators)
    artifact_url = serializers.CharField(max_length=500, required=False, allow_blank=True,
                                         default="")
    artifact_sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", required=False,
                                             allow_blank=True, default="")
    commit_sha = serializers.RegexField(r"^[0-9a-fA-F]{7,40}$", required=False,
                                        allow_blank=True, default="")
    committed_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    notes = serializers.CharField(required=False, allow_blank=True, default="",
                                  max_length=20000)


class EnvironmentList(ApiMixin, generics.ListAPIView):
    serializer_class = EnvironmentSerializer
    pagination_class = None
    queryset = Environment.objects.order_by("order")


class ApplicationList(ApiMixin, generics.ListAPIView):
    serializer_class = ApplicationSerializer
    pagination_class = None
    queryset = Application.objects.order_by("name")


class ReleaseFilter(django_filters.FilterSet):
    application = django_filters.CharFilter(field_name="application__slug")
    version = django_filters.CharFilter()
    commit_sha = django_filters.CharFilter()

    class Meta:
        model = Release
        fields = ["application", "version", "commit_sha"]


class ReleaseListCreate(ApiMixin, generics.ListAPIView):
    serializer_class = ReleaseOutSerializer
    filterset_class = ReleaseFilter
    queryset = Release.objects.select_related("application")
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=ReleaseInSerializer,
                   responses={201: ReleaseOutSerializer, 200: ReleaseOutSerializer},
                   summary="Register a release (the same body again: 200 with the same release)")
    @idempotent
    def post(self, request):
        data = ReleaseInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        held = environment_permissions(request.user)
        if not any("request_change" in codes for codes in held.values()):
            raise Refused("you may not register releases", code="not_permitted")
        release, created = services.release_register(actor=request.user, **data.validated_data)
        return Response(ReleaseOutSerializer(release).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ReleaseDetail(ApiMixin, generics.RetrieveAPIView):
    serializer_class = ReleaseOutSerializer
    queryset = Release.objects.select_related("application")


class StepSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentStep
        fields = ["position", "name", "title", "status", "started_at", "finished_at", "detail"]


class DeploymentSerializer(serializers.ModelSerializer):
    application = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    environment = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.CharField(source="release.version", read_only=True)
    change = serializers.IntegerField(source="change_id", read_only=True, allow_null=True)
    duration_seconds = serializers.SerializerMethodField()
    steps = StepSerializer(many=True, read_only=True)

    class Meta:
        model = Deployment
        fields = ["id", "application", "environment", "release", "version", "change",
                  "strategy", "status", "progress", "created_at", "started_at", "finished_at",
                  "duration_seconds", "failure_reason", "steps"]

    def get_duration_seconds(self, obj) -> float | None:
        duration = obj.duration
        return duration.total_seconds() if duration is not None else None


class DeploymentFilter(django_filters.FilterSet):
    application = django_filters.CharFilter(field_name="application__slug")
    environment = django_filters.CharFilter(field_name="environment__slug")
    status = django_filters.ChoiceFilter(choices=Deployment.Status.choices)
    change = django_filters.NumberFilter(field_name="change_id")
    release = django_filters.NumberFilter(field_name="release_id")
    since = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = DateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Deployment
        fields = ["application", "environment", "status", "change", "release", "since",
                  "until"]


class DeploymentList(ApiMixin, generics.ListAPIView):
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return selectors.deployments_visible_to(self.request.user).prefetch_related("steps")


class DeploymentDetail(ApiMixin, generics.RetrieveAPIView):
    serializer_class = DeploymentSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return selectors.deployments_visible_to(self.request.user).prefetch_related("steps")


class LogLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentLogLine
        fields = ["seq", "at", "level", "message"]


class LogQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0,
                                     help_text="Return the lines after this sequence number.")


LOG_PAGE = 1000


class DeploymentLog(ApiView):
    @extend_schema(parameters=[LogQuerySerializer], responses=LogLineSerializer(many=True),
                   summary="Log lines in order; poll with ?after=<last seq> for the rest "
                           f"(at most {LOG_PAGE} a call)")
    def get(self, request, pk: int):
        deployment = get_object_or_404(selectors.deployments_visible_to(request.user), pk=pk)
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        lines = (DeploymentLogLine.objects.filter(deployment=deployment,
                                                  seq__gt=query.validated_data["after"])
                 .order_by("seq")[:LOG_PAGE])
        return Response(LogLineSerializer(lines, many=True).data)


class RollbackInSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class DeploymentRollback(ApiView):
    write_scopes = frozenset({DEPLOY})

    @extend_schema(request=RollbackInSerializer, responses={202: DeploymentSerializer},
                   summary="Roll back a deployment; answers with the rollback deployment")
    @idempotent
    def post(self, request, pk: int):
        deployment = get_object_or_404(selectors.deployments_visible_to(request.user), pk=pk)
        data = RollbackInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rollback = getattr(services, "deployment_rollback", None)
        if rollback is None:
            raise Conflict("this portal cannot roll back deployments yet",
                           code="rollback_unavailable")
        rolled = rollback(actor=request.user, deployment=deployment,
                          reason=data.validated_data["reason"])
        rolled = selectors.deployments_visible_to(request.user).filter(pk=rolled.pk) \
            .prefetch_related("steps").first() or rolled
        return Response(DeploymentSerializer(rolled).data, status=status.HTTP_202_ACCEPTED)


class DeploymentCancelInSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="",
                                   max_length=2000)


class DeploymentCancel(ApiView):
    write_scopes = frozenset({DEPLOY})

    @extend_schema(request=DeploymentCancelInSerializer, responses={200: DeploymentSerializer},
                   summary="Stop a queued or running deployment before its next step")
    @idempotent
    def post(self, request, pk: int):
        deployment = get_object_or_404(selectors.deployments_visible_to(request.user), pk=pk)
        data = DeploymentCancelInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.deployment_cancel(actor=request.user, deployment=deployment,
                                   reason=data.validated_data["reason"])
        deployment = selectors.deployments_visible_to(request.user).prefetch_related(
            "steps").get(pk=pk)
        return Response(DeploymentSerializer(deployment).data)


# --- DORA metrics ---------------------------------------------------------------------


class DoraQuerySerializer(serializers.Serializer):
    environment = serializers.SlugField(default="production")
    application = serializers.SlugField(required=False)
    since = serializers.DateTimeField(required=False, help_text="Default: 30 days ago.")
    until = serializers.DateTimeField(required=False, help_text="Default: now.")
    period = serializers.ChoiceField(choices=["day", "week", "month"], default="week")

    def validate(self, attrs):
        until = attrs.get("until") or timezone.now()
        since = attrs.get("since") or until - timedelta(days=30)
        if since >= until:
            raise serializers.ValidationError({"since": ["since must be before until."]})
        if until - since > timedelta(days=3 * 366):
            raise serializers.ValidationError({"since": ["Ask for at most three years."]})
        attrs["since"], attrs["until"] = since, until
        return attrs


class DoraFiguresSerializer(serializers.Serializer):
    deployments = serializers.IntegerField(help_text="Finished deployments (not cancelled).")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Failed or rolled back.")
    deployment_frequency_per_day = serializers.FloatField()
    lead_time_hours = serializers.FloatField(
        allow_null=True, help_text="Median, commit (or release registration) to success.")
    mttr_hours = serializers.FloatField(
        allow_null=True, help_text="Median, failed deployment to the next success there.")
    change_failure_rate = serializers.FloatField(allow_null=True, help_text="0 to 1.")
    success_rate = serializers.FloatField(allow_null=True, help_text="0 to 1.")


class DoraPeriodSerializer(DoraFiguresSerializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class DoraOutSerializer(serializers.Serializer):
    environment = serializers.CharField()
    application = serializers.CharField(allow_null=True)
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    period = serializers.CharField()
    totals = DoraFiguresSerializer()
    periods = DoraPeriodSerializer(many=True)


def _period_starts(since: datetime, until: datetime, period: str) -> list[datetime]:
    starts, current = [], since
    while current < until:
        starts.append(current)
        if period == "day":
            current += timedelta(days=1)
        elif period == "week":
            current += timedelta(days=7)
        else:
            month = current.month % 12 + 1
            year = current.year + (current.month == 12)
            try:
                current = current.replace(year=year, month=month)
            except ValueError:  # the 31st of a month followed by a shorter one
                current = current.replace(year=year, month=month, day=28)
    return starts


def _hours(values: list[timedelta]) -> float | None:
    if not values:
        return None
    return round(statistics.median(v.total_seconds() for v in values) / 3600, 3)


def _figures(rows: list[dict], start: datetime, end: datetime, recovered: dict) -> dict:
    finished = [r for r in rows if start <= r["finished_at"] < end]
    ok = [r for r in finished if r["status"] == Deployment.Status.SUCCEEDED]
    bad = [r for r in finished if r["status"] != Deployment.Status.SUCCEEDED]
    days = max((end - start).total_seconds() / 86400, 1e-9)
    lead = [r["finished_at"] - (r["release__committed_at"] or r["release__created_at"])
            for r in ok]
    mttr = [recovered[r["id"]] - r["finished_at"] for r in bad if r["id"] in recovered]
    total = len(finished)
    return {
        "deployments": total,
        "succeeded": len(ok),
        "failed": len(bad),
        "deployment_frequency_per_day": round(len(ok) / days, 4),
        "lead_time_hours": _hours([v for v in lead if v >= timedelta(0)]),
        "mttr_hours": _hours(mttr),
        "change_failure_rate": round(len(bad) / total, 4) if total else None,
        "success_rate": round(len(ok) / total, 4) if total else None,
    }


def dora_metrics(*, user, environment: str, application: str | None, since: datetime,
                 until: datetime, period: str) -> dict:
    """The four DORA keys and the success rate over the deployments ``user`` may see."""
    final = [Deployment.Status.SUCCEEDED, Deployment.Status.FAILED,
             Deployment.Status.ROLLED_BACK]
    qs = selectors.deployments_visible_to(user).filter(
        environment__slug=environment, status__in=final, finished_at__isnull=False)
    if application:
        qs = qs.filter(application__slug=application)
    # Deployments finishing after ``until`` still tell when a failure inside it recovered.
    rows = list(qs.filter(finished_at__gte=since).order_by("finished_at").values(
        "id", "application_id", "status", "finished_at", "release__committed_at",
        "release__created_at"))
    recovered: dict[int, datetime] = {}
    pending: dict[int, list[dict]] = {}
    for row in rows:
        if row["status"] == Deployment.Status.SUCCEEDED:
            for failed in pending.pop(row["application_id"], []):
                recovered[failed["id"]] = row["finished_at"]
        else:
            pending.setdefault(row["application_id"], []).append(row)
    starts = _period_starts(since, until, period)
    periods = [{"start": start, "end": end, **_figures(rows, start, end, recovered)}
               for start, end in zip(starts, starts[1:] + [until], strict=True)]
    return {"environment": environment, "application": application, "since": since,
            "until": until, "period": period, "totals": _figures(rows, since, until, recovered),
            "periods": periods}


class DoraMetrics(ApiView):
    @extend_schema(parameters=[DoraQuerySerializer], responses={200: DoraOutSerializer},
                   summary="Deployment frequency, lead time, MTTR, change failure rate and "
                           "success rate by period")
    def get(self, request):
        query = DoraQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        if not Environment.objects.filter(slug=params["environment"]).exists():
            raise serializers.ValidationError({"environment": ["No such environment."]})
        body = dora_metrics(user=request.user, environment=params["environment"],
                            application=params.get("application"), since=params["since"],
                            until=params["until"], period=params["period"])
        return Response(DoraOutSerializer(body).data)

