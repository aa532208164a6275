"""REST API v1: change requests, decisions, deploy and cancel (DESIGN.md section 7)."""

from __future__ import annotations

import django_filters
from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import selectors, services
from approvals.models import Approval, ChangeRequest, ChangeType, Gate, GateRole, Strategy
from deployments.models import Deployment, Environment, Release
from portal.api import error_body


class ApprovalSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username", read_only=True)

    class Meta:
        model = Approval
        fields = ["approver", "decision", "comment", "decided_at"]


class GateSerializer(serializers.ModelSerializer):
    gate = serializers.CharField(source="role", read_only=True)
    approvals = ApprovalSerializer(many=True, read_only=True)

    class Meta:
        model = Gate
        fields = ["gate", "status", "required", "approvals"]


class ChangeOutSerializer(serializers.ModelSerializer):
    release = serializers.IntegerField(source="release_id", read_only=True)
    application = serializers.CharField(source="release.application.slug", read_only=True)
    version = serializers.CharField(source="release.version", read_only=True)
    environment = serializers.CharField(source="environment.slug", read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    on_call = serializers.CharField(source="on_call.username", read_only=True, default=None)
    gates = GateSerializer(many=True, read_only=True)
    checklist = serializers.SerializerMethodField()
    blockers = serializers.SerializerMethodField()
    deployment = serializers.SerializerMethodField()

    class Meta:
        model = ChangeRequest
        fields = ["id", "reference", "release", "application", "version", "environment",
                  "change_type", "strategy", "risk", "impact", "rollback_plan", "on_call",
                  "scheduled_for", "deploy_when_approved", "status", "requested_by",
                  "created_at", "submitted_at", "closed_at", "gates", "checklist",
                  "blockers", "deployment"]

    def get_checklist(self, obj) -> list[dict]:
        # Readiness checklists arrive with the checklist templates (SOP 3.1, 3.2).
        return []

    def get_blockers(self, obj) -> list[str]:
        return [b.code for b in selectors.change_blockers(obj)]

    def get_deployment(self, obj) -> int | None:
        if hasattr(obj, "latest_deployment_id"):
            return obj.latest_deployment_id
        return (Deployment.objects.filter(change_id=obj.pk).order_by("-id")
                .values_list("pk", flat=True).first())


class ChangeInSerializer(serializers.Serializer):
    release = serializers.PrimaryKeyRelatedField(
        queryset=Release.objects.select_related("application"))
    environment = serializers.SlugRelatedField(slug_field="slug",
                                               queryset=Environment.objects.all())
    change_type = serializers.ChoiceField(choices=ChangeType.choices, default=ChangeType.STANDARD)
    strategy = serializers.ChoiceField(choices=Strategy.choices, default=Strategy.ALL_AT_ONCE)
    rollback_plan = serializers.CharField(required=False, allow_blank=True, default="",
                                          max_length=20000)
    risk = serializers.ChoiceField(choices=["low", "medium", "high"], required=False,
                                   allow_blank=True, default="")
    impact = serializers.CharField(required=False, allow_blank=True, default="",
                                   max_length=20000)
    on_call = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.filter(is_active=True),
        required=False, allow_null=True, default=None)
    scheduled_for = serializers.DateTimeField(required=False, allow_null=True, default=None)
    deploy_when_approved = serializers.BooleanField(required=False, default=False)
    draft = serializers.BooleanField(required=False, default=False)


class DecisionInSerializer(serializers.Serializer):
    gate = serializers.ChoiceField(choices=GateRole.choices)
    comment = serializers.CharField(required=False, allow_blank=True, default="",
                                    max_length=5000)


class RejectInSerializer(DecisionInSerializer):
    comment = serializers.CharField(max_length=5000)


class DeployOutSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    status = serializers.CharField()


class ChangeFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=ChangeRequest.Status.choices)
    environment = django_filters.CharFilter(field_name="environment__slug")
    application = django_filters.CharFilter(field_name="release__application__slug")
    change_type = django_filters.ChoiceFilter(choices=ChangeType.choices)

    class Meta:
        model = ChangeRequest
        fields = ["status", "environment", "application", "change_type"]


class ChangeListCreate(generics.ListAPIView):
    serializer_class = ChangeOutSerializer
    filterset_class = ChangeFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ChangeRequest.objects.none()
        return selectors.changes_visible_to(self.request.user)

    @extend_schema(request=ChangeInSerializer, responses={201: ChangeOutSerializer})
    def post(self, request):
        data = ChangeInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        change = services.change_request_create(actor=request.user, **data.validated_data)
        change = selectors.change_detail_queryset().get(pk=change.pk)
        return Response(ChangeOutSerializer(change).data, status=status.HTTP_201_CREATED)


class ChangeDetail(generics.RetrieveAPIView):
    serializer_class = ChangeOutSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ChangeRequest.objects.none()
        return selectors.changes_visible_to(self.request.user)


class _ChangeAction(APIView):
    """Looks the change up among those the caller can see: another team's change is a 404."""

    def get_change(self, request, pk: int) -> ChangeRequest:
        return get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)

    def respond(self, change: ChangeRequest, code: int = status.HTTP_200_OK) -> Response:
        change = selectors.change_detail_queryset().get(pk=change.pk)
        return Response(ChangeOutSerializer(change).data, status=code)


class ChangeApprove(_ChangeAction):
    @extend_schema(request=DecisionInSerializer, responses={200: ChangeOutSerializer})
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        data = DecisionInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.gate_approve(actor=request.user, change=change, role=data.validated_data["gate"],
                              comment=data.validated_data["comment"])
        return self.respond(change)


class ChangeReject(_ChangeAction):
    @extend_schema(request=RejectInSerializer, responses={200: ChangeOutSerializer})
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        data = RejectInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.gate_reject(actor=request.user, change=change, role=data.validated_data["gate"],
                             comment=data.validated_data["comment"])
        return self.respond(change)


class ChangeDeploy(_ChangeAction):
    @extend_schema(request=None, responses={202: DeployOutSerializer})
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        deployment = services.change_request_deploy(actor=request.user, change=change)
        return Response({"deployment": deployment.pk, "status": deployment.status},
                        status=status.HTTP_202_ACCEPTED)


class ChangeCancel(_ChangeAction):
    @extend_schema(request=None, responses={200: ChangeOutSerializer})
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        if not isinstance(reason, str):
            return Response(error_body("invalid", "reason must be text",
                                       fields={"reason": ["Send text."]}), status=400)
        services.change_request_cancel(actor=request.user, change=change, reason=reason[:2000])
        return self.respond(change)
