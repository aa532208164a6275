"""REST API v1: deployments, log, rollback, cancel, on-call's step decisions (DESIGN.md
section 7; environments, applications and releases live in catalog.api, DORA metrics in
reporting.metrics_views)."""

from __future__ import annotations

import django_filters
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from core.api import (
    DEPLOY,
    ApiMixin,
    ApiView,
    ChoiceFilter,
    DateTimeFilter,
    IdFilter,
    query_values,
)
from core.idempotency import idempotent
from deployments import selectors, services
from deployments.models import AnalysisVerdict, Deployment, DeploymentLogLine, DeploymentStep


class StepSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target.name", read_only=True, allow_null=True,
                                   default=None)

    class Meta:
        model = DeploymentStep
        fields = ["position", "name", "title", "target", "phase", "status", "attempts",
                  "started_at", "finished_at", "detail"]


class VerdictSerializer(serializers.ModelSerializer):
    class Meta:
        model = AnalysisVerdict
        fields = ["phase", "provider", "outcome", "dry_run", "action", "figures", "reasons",
                  "created_at"]


class DeploymentSerializer(serializers.ModelSerializer):
    application = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    environment = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.CharField(source="release.version", read_only=True)
    change = serializers.IntegerField(source="change_id", read_only=True, allow_null=True)
    duration_seconds = serializers.SerializerMethodField()
    steps = StepSerializer(many=True, read_only=True)
    verdicts = VerdictSerializer(many=True, read_only=True)
    queue_position = serializers.SerializerMethodField(
        help_text="Queued behind another deployment of the application there: 1 for the "
                  "next to start. Null when it is not waiting.")
    waiting_for = serializers.SerializerMethodField(
        help_text="The deployment it waits for (holding the target); null when not waiting.")

    class Meta:
        model = Deployment
        fields = ["id", "application", "environment", "release", "version", "change",
                  "kind", "rolled_back_deployment", "dry_run",
                  "strategy", "status", "progress", "created_at", "started_at", "finished_at",
                  "duration_seconds", "failure_reason", "steps", "verdicts",
                  "queue_position", "waiting_for"]

    def _queue(self, obj) -> dict:
        if obj.status != Deployment.Status.QUEUED or obj.holds_target:
            return {"position": None, "waiting_for": None, "head": None}
        cache = self.context.setdefault("queue_state", {})
        if obj.pk not in cache:
            cache[obj.pk] = selectors.queue_state(obj)
        return cache[obj.pk]

    def get_queue_position(self, obj) -> int | None:
        return self._queue(obj)["position"]

    def get_waiting_for(self, obj) -> int | None:
        return self._queue(obj)["waiting_for"]

    def get_duration_seconds(self, obj) -> float | None:
        duration = obj.duration
        return duration.total_seconds() if duration is not None else None


DEPLOYMENT_PREFETCH = (Prefetch("steps", queryset=DeploymentStep.objects.select_related("target")),
                       "verdicts")


class DeploymentFilter(django_filters.FilterSet):
    application = django_filters.CharFilter(field_name="application__slug")
    environment = django_filters.CharFilter(field_name="environment__slug")
    status = ChoiceFilter(choices=Deployment.Status.choices)
    change = IdFilter(field_name="change_id")
    release = IdFilter(field_name="release_id")
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
        return (selectors.deployments_visible_to(self.request.user)
                .prefetch_related(*DEPLOYMENT_PREFETCH))

    # The rows from values(), not through DeploymentSerializer (the same body, faster:
    # deployments/api_rows.py); filters, ordering and paging are the view's as before.
    def list(self, request, *args, **kwargs):
        from deployments.api_rows import ROW_FIELDS, deployment_rows

        rows = self.filter_queryset(self.get_queryset()).prefetch_related(None)
        page = self.paginate_queryset(rows.values(*ROW_FIELDS))
        return self.get_paginated_response(deployment_rows(page))


class DeploymentDetail(ApiMixin, generics.RetrieveAPIView):
    serializer_class = DeploymentSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return (selectors.deployments_visible_to(self.request.user)
                .prefetch_related(*DEPLOYMENT_PREFETCH))


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
        query = LogQuerySerializer(data=query_values(request))
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
        rolled = services.deployment_rollback(actor=request.user, deployment=deployment,
                                              reason=data.validated_data["reason"])
        rolled = selectors.deployments_visible_to(request.user).filter(pk=rolled.pk) \
            .prefetch_related(*DEPLOYMENT_PREFETCH).first() or rolled
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
            *DEPLOYMENT_PREFETCH).get(pk=pk)
        return Response(DeploymentSerializer(deployment).data)


class StepDecisionInSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="",
                                   max_length=2000)


class MarkStepDoneInSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000,
                                   help_text="What was checked by hand (required).")


class _StepDecision(ApiView):
    """On-call's decision on the interrupted step of a deployment that needs attention."""

    write_scopes = frozenset({DEPLOY})
    decide = None  # the service that carries the decision out
    input_serializer = StepDecisionInSerializer

    def post(self, request, pk: int):
        deployment = get_object_or_404(selectors.deployments_visible_to(request.user), pk=pk)
        data = self.input_serializer(data=request.data)
        data.is_valid(raise_exception=True)
        type(self).decide(actor=request.user, deployment=deployment,
                          reason=data.validated_data["reason"])
        deployment = selectors.deployments_visible_to(request.user).prefetch_related(
            *DEPLOYMENT_PREFETCH).get(pk=pk)
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_202_ACCEPTED)


class DeploymentRetryStep(_StepDecision):
    decide = services.deployment_retry_step

    @extend_schema(request=StepDecisionInSerializer, responses={202: DeploymentSerializer},
                   summary="Run the interrupted step of a deployment that needs attention "
                           "again, then the rest")
    @idempotent
    def post(self, request, pk: int):
        return super().post(request, pk)


class DeploymentMarkStepDone(_StepDecision):
    decide = services.deployment_mark_step_done
    input_serializer = MarkStepDoneInSerializer

    @extend_schema(request=MarkStepDoneInSerializer, responses={202: DeploymentSerializer},
                   summary="Record the interrupted step of a deployment that needs attention "
                           "as done (checked by hand), then run the rest")
    @idempotent
    def post(self, request, pk: int):
        return super().post(request, pk)
