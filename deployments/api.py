"""REST API v1: environments, applications, releases, deployments (DESIGN.md section 7)."""

from __future__ import annotations

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments import selectors, services
from deployments.models import (
    Application,
    Deployment,
    DeploymentLogLine,
    DeploymentStep,
    Environment,
    Release,
)
from portal.errors import Invalid, Refused
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

    class Meta:
        model = Release
        fields = ["id", "application", "version", "artifact_url", "artifact_sha256",
                  "commit_sha", "committed_at", "notes", "checks", "created_at"]


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


class EnvironmentList(generics.ListAPIView):
    serializer_class = EnvironmentSerializer
    pagination_class = None
    queryset = Environment.objects.order_by("order")


class ApplicationList(generics.ListAPIView):
    serializer_class = ApplicationSerializer
    pagination_class = None
    queryset = Application.objects.order_by("name")


class ReleaseCreate(APIView):
    @extend_schema(request=ReleaseInSerializer, responses={201: ReleaseOutSerializer,
                                                           200: ReleaseOutSerializer})
    def post(self, request):
        data = ReleaseInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        held = environment_permissions(request.user)
        if not any("request_change" in codes for codes in held.values()):
            raise Refused("you may not register releases", code="not_permitted")
        release, created = services.release_register(actor=request.user, **data.validated_data)
        return Response(ReleaseOutSerializer(release).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ReleaseDetail(generics.RetrieveAPIView):
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
    change = serializers.IntegerField(source="change_id", read_only=True)
    steps = StepSerializer(many=True, read_only=True)

    class Meta:
        model = Deployment
        fields = ["id", "application", "environment", "release", "version", "change",
                  "strategy", "status", "progress", "created_at", "started_at", "finished_at",
                  "failure_reason", "steps"]


class DeploymentFilter(django_filters.FilterSet):
    application = django_filters.CharFilter(field_name="application__slug")
    environment = django_filters.CharFilter(field_name="environment__slug")
    status = django_filters.ChoiceFilter(choices=Deployment.Status.choices)

    class Meta:
        model = Deployment
        fields = ["application", "environment", "status"]


class DeploymentList(generics.ListAPIView):
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return selectors.deployments_visible_to(self.request.user).prefetch_related("steps")


class DeploymentDetail(generics.RetrieveAPIView):
    serializer_class = DeploymentSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return selectors.deployments_visible_to(self.request.user).prefetch_related("steps")


class LogLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentLogLine
        fields = ["seq", "at", "level", "message"]


class DeploymentLog(APIView):
    @extend_schema(responses=LogLineSerializer(many=True))
    def get(self, request, pk: int):
        deployment = get_object_or_404(selectors.deployments_visible_to(request.user), pk=pk)
        raw = request.query_params.get("after", "0")
        if not raw.isdigit() or len(raw) > 12:
            raise Invalid("after must be a log line number",
                          fields={"after": ["A whole number, 0 or more."]})
        after = int(raw)
        lines = deployment.log_lines.filter(seq__gt=after).order_by("seq")[:1000]
        return Response(LogLineSerializer(lines, many=True).data)
