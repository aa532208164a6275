"""REST API v1 for auditors: the audit trail, in pages or as CSV."""

from __future__ import annotations

import django_filters
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, serializers
from rest_framework.renderers import JSONRenderer

from audit.models import AuditEvent
from audit.permissions import is_auditor
from core.api import ApiMixin, DateTimeFilter
from reporting import exports


class IsAuditor(permissions.BasePermission):
    message = "Only auditors and administrators may read the audit trail."

    def has_permission(self, request, view) -> bool:
        return is_auditor(request.user)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = exports.EXPORT_FIELDS


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.CharFilter()
    actor = django_filters.CharFilter(field_name="actor_name", lookup_expr="istartswith")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    environment = django_filters.CharFilter()
    since = DateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = DateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "object_type", "object_id", "environment", "since", "until"]


class AuditEventList(ApiMixin, generics.ListAPIView):
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    permission_classes = [*ApiMixin.permission_classes, IsAuditor]
    queryset = AuditEvent.objects.all()

    def perform_content_negotiation(self, request, force=False):
        # ?format=csv is served by list() itself as a stream; errors stay JSON.
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"],
                                     description="`csv` streams every matching event "
                                                 "(no paging), oldest first.")],
        responses={(200, "application/json"): AuditEventSerializer(many=True),
                   (200, "text/csv"): OpenApiTypes.STR},
        summary="The audit trail, newest first, in cursor pages; or all of it as CSV")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def list(self, request, *args, **kwargs):
        wanted = request.query_params.get("format", "json")
        if wanted not in ("json", "csv"):
            raise serializers.ValidationError({"format": ["Choose json or csv."]})
        if wanted == "csv":
            events = self.filter_queryset(self.get_queryset()).order_by("id")
            response = StreamingHttpResponse(exports.audit_csv(events, style="api"),
                                             content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="audit-events.csv"'
            return response
        return super().list(request, *args, **kwargs)
