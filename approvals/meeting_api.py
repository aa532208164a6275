"""REST API v1: CAB meetings and their agendas (docs/cab.md). Read only: decisions in a
meeting are taken on its page, each member with their own second factor."""

from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import generics, serializers

from approvals import meeting_selectors
from approvals.models import CabAgendaItem, CabMeeting
from core.api import ApiMixin


class CabConflictOut(serializers.Serializer):
    change = serializers.IntegerField(allow_null=True)
    kind = serializers.CharField()
    allowed = serializers.BooleanField()
    reason = serializers.CharField()


class CabAgendaItemOut(serializers.Serializer):
    change = serializers.IntegerField(source="item.change_id",
                                      help_text="The change request's id.")
    reference = serializers.CharField(source="item.change.reference")
    position = serializers.IntegerField(source="item.position")
    source = serializers.ChoiceField(source="item.source", choices=CabAgendaItem.Source.choices)
    risk_score = serializers.SerializerMethodField()
    conflicts = serializers.SerializerMethodField()
    deferred = serializers.BooleanField(source="item.deferred")
    defer_reason = serializers.CharField(source="item.defer_reason")
    decision = serializers.ChoiceField(source="item.decision",
                                       choices=CabAgendaItem.Decision.choices,
                                       help_text="Empty until decided in the meeting.")
    comment = serializers.CharField(source="item.comment")
    decided_by = serializers.CharField(source="item.decided_by.username", default=None,
                                       allow_null=True)
    decided_at = serializers.DateTimeField(source="item.decided_at", allow_null=True)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_risk_score(self, row) -> int | None:
        return row.risk.score if row.risk else None

    @extend_schema_field(CabConflictOut(many=True))
    def get_conflicts(self, row) -> list[dict]:
        visible = self.context.get("visible")
        return [{"change": c.change_id if visible is None or c.environment_id in visible
                 else None,
                 "kind": c.kind, "allowed": c.allowed,
                 "reason": c.reason} for c in row.conflicts]


class CabMeetingOut(serializers.ModelSerializer):
    schedule = serializers.CharField(source="schedule.name")
    environment = serializers.CharField(source="schedule.environment.slug")
    chair = serializers.CharField(source="schedule.chair.username")
    items_count = serializers.IntegerField(read_only=True,
                                           help_text="How many items its agenda holds.")

    class Meta:
        model = CabMeeting
        fields = ["id", "schedule", "environment", "chair", "starts_at", "ends_at", "status",
                  "closed_at", "items_count"]


class CabMeetingDetailOut(CabMeetingOut):
    items = serializers.SerializerMethodField()

    class Meta(CabMeetingOut.Meta):
        fields = [*CabMeetingOut.Meta.fields, "items"]

    @extend_schema_field(CabAgendaItemOut(many=True))
    def get_items(self, meeting) -> list[dict]:
        rows = meeting_selectors.agenda_rows(meeting)
        return CabAgendaItemOut(rows, many=True, context=self.context).data


def _meetings(request):
    return (meeting_selectors.meetings_visible_to(request.user)
            .annotate(items_count=Count("items")))


class _VisibleMeetings:
    """The meetings the caller may see, for the list and the detail alike."""

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CabMeeting.objects.none()
        return _meetings(self.request)


@extend_schema_view(get=extend_schema(summary="CAB meetings you may see (newest first)"))
class CabMeetingList(_VisibleMeetings, ApiMixin, generics.ListAPIView):
    serializer_class = CabMeetingOut


@extend_schema_view(get=extend_schema(summary="A CAB meeting with its agenda"))
class CabMeetingDetail(_VisibleMeetings, ApiMixin, generics.RetrieveAPIView):
    serializer_class = CabMeetingDetailOut

    def get_serializer_context(self):
        from catalog.selectors import visible_environment_ids

        ids = visible_environment_ids(self.request.user)
        return {**super().get_serializer_context(),
                "visible": None if ids is None else set(ids)}
