"""REST API v1 of the catalogue: environments, applications, releases (DESIGN.md
section 7)."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from catalog import services
from catalog.models import Application, Environment, Release
from catalog.selectors import releases_visible_to
from core.api import REQUEST, ApiMixin
from core.idempotency import idempotent


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

    @staticmethod
    def schema_rules() -> dict:
        # SOP 10.1 in the schema: an artifact URL lies under a trusted source (this
        # portal's PORTAL_ARTIFACT_SOURCES), names a path without '..', query or
        # percent-escapes, and comes with the artifact's SHA-256.
        return {"properties": {"artifact_url": {"pattern": services.artifact_url_pattern()}},
                "if": {"required": ["artifact_url"],
                       "properties": {"artifact_url": {"minLength": 1}}},
                "then": {"required": ["artifact_sha256"],
                         "properties": {"artifact_sha256": {"minLength": 1}}}}


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

    def get_queryset(self):
        return releases_visible_to(self.request.user)

    @extend_schema(request=ReleaseInSerializer,
                   responses={201: ReleaseOutSerializer, 200: ReleaseOutSerializer},
                   summary="Register a release (the same body again: 200 with the same release)")
    @idempotent
    def post(self, request):
        data = ReleaseInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        release, created = services.release_register(actor=request.user, **data.validated_data)
        return Response(ReleaseOutSerializer(release).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ReleaseDetail(ApiMixin, generics.RetrieveAPIView):
    serializer_class = ReleaseOutSerializer
    queryset = Release.objects.select_related("application")

    def get_queryset(self):
        return releases_visible_to(self.request.user)
