"""REST API v1 of the shared core: the audit trail (auditors and admins only)."""

from __future__ import annotations

import django_filters
from rest_framework import generics, permissions, serializers

from portal.models import AuditEvent
from portal.permissions import is_auditor


class IsAuditor(permissions.BasePermission):
    message = "Only auditors and administrators may read the audit trail."

    def has_permission(self, request, view) -> bool:
        return is_auditor(request.user)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "occurred_at", "actor_name", "actor_kind", "action", "object_type",
                  "object_id", "object_repr", "environment", "before", "after", "reason",
                  "request_id", "ip", "user_agent", "prev_hash", "hash"]


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.CharFilter()
    actor = django_filters.CharFilter(field_name="actor_name", lookup_expr="istartswith")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    environment = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "object_type", "object_id", "environment", "since", "until"]


class AuditEventList(generics.ListAPIView):
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    permission_classes = [permissions.IsAuthenticated, IsAuditor]
    queryset = AuditEvent.objects.all()
