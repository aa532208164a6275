"""REST API v1: change requests, decisions, checklist, deploy, cancel, preflight
(DESIGN.md section 7). Thin: an input serializer validates, a service acts, an
output serializer answers."""

from __future__ import annotations

import django_filters
from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from approvals import conflicts, eligibility, risk_selectors, selectors, services
from approvals.models import (
    Approval,
    ChangeRequest,
    ChangeType,
    Gate,
    GateRole,
    Risk,
    RiskAssessment,
    Strategy,
)
from audit.permissions import is_auditor
from catalog.models import Environment, Release
from catalog.permissions import environment_permissions
from configuration.selectors import digests_for_many
from core import logcontext
from core.api import (
    APPROVE,
    DEPLOY,
    REQUEST,
    ApiMixin,
    ApiView,
    BoundedDateTimeField,
    ChoiceFilter,
    IdFilter,
    query_values,
)
from core.idempotency import idempotent
from deployments import selectors as deployment_selectors
from deployments.models import Deployment


class ApprovalSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username", read_only=True)
    on_behalf_of = serializers.CharField(
        source="on_behalf_of.username", read_only=True, default=None, allow_null=True,
        help_text="The delegator the approver decided for, when decided by delegation.")
    withdrawn_at = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="Set when the decision no longer counts: withdrawn by its approver, "
                  "superseded by an edit, or reopened at a start because its approver "
                  "became an author or merger of the release.")
    withdrawn_reason = serializers.CharField(read_only=True)

    class Meta:
        model = Approval
        fields = ["approver", "decision", "comment", "decided_at", "on_behalf_of",
                  "withdrawn_at", "withdrawn_reason"]


class GateSerializer(serializers.ModelSerializer):
    gate = serializers.CharField(source="role", read_only=True)
    approvals = ApprovalSerializer(many=True, read_only=True)
    can_decide = serializers.SerializerMethodField(
        help_text="Whether you may decide this gate now (approvals.eligibility).")
    eligibility = serializers.SerializerMethodField(
        help_text="Why you may or may not decide it: " + ", ".join(eligibility.CODES) + ".")

    # Deadlines (docs/cab.md).
    expires_at = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="Decide by this time, or the gate expires and the change goes back to "
                  "draft; null: no approve-by time.")

    class Meta:
        model = Gate
        fields = ["gate", "status", "required", "approvals", "can_decide", "eligibility",
                  "expires_at"]

    def get_can_decide(self, gate) -> bool:
        verdict = getattr(gate, "verdict", None)
        return bool(verdict and verdict.eligible)

    def get_eligibility(self, gate) -> str | None:
        verdict = getattr(gate, "verdict", None)
        return verdict.code if verdict else None


class ChecklistItemOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    kind = serializers.CharField()
    done = serializers.BooleanField()
    automatic = serializers.BooleanField()
    note = serializers.CharField(allow_blank=True)


# Risk (docs/cab.md): the portal's assessment of a change.
class RiskFactorOutSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    value = serializers.JSONField(allow_null=True, help_text="What was measured (a kind, a "
                                  "share in percent, a rate, a count), null when unknown.")
    weight = serializers.IntegerField(help_text="The most points the factor can give.")
    points = serializers.IntegerField(help_text="weight × severity (0 to 1), rounded.")
    explanation = serializers.CharField()


class RiskAssessmentOutSerializer(serializers.Serializer):
    score = serializers.IntegerField(min_value=0, max_value=100)
    factors = RiskFactorOutSerializer(many=True)
    assessed_at = serializers.DateTimeField(source="created_at")
    trigger = serializers.ChoiceField(choices=RiskAssessment.Trigger.choices)


class ConflictOutSerializer(serializers.Serializer):
    change = serializers.IntegerField(allow_null=True,
                                      help_text="The other change; null for a freeze.")
    kind = serializers.ChoiceField(choices=conflicts.KINDS)
    reason = serializers.CharField()
    allowed = serializers.BooleanField(
        help_text="A freeze the change's policy passes: shown, never blocking.")


class ChangeOutSerializer(serializers.ModelSerializer):
    release = serializers.IntegerField(source="release_id", read_only=True)
    application = serializers.CharField(source="release.application.slug", read_only=True)
    version = serializers.CharField(source="release.version", read_only=True)
    environment = serializers.CharField(source="environment.slug", read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    on_call = serializers.CharField(source="on_call.username", read_only=True, default=None,
                                    allow_null=True)
    gates = GateSerializer(many=True, read_only=True)
    checklist = serializers.SerializerMethodField()
    blockers = serializers.SerializerMethodField()
    deployment = serializers.SerializerMethodField()
    deployer = serializers.CharField(source="deployer.username", read_only=True, default=None,
                                     allow_null=True, help_text="Who the deployment starts "
                                     "as when it starts by itself (once approved or at the "
                                     "scheduled time).")
    fingerprint = serializers.SerializerMethodField(
        help_text="The version of the change as shown here; send it back with approve or "
                  "reject, which are refused (409 changed_since_viewed) if the change moved.")
    # Deadlines (docs/cab.md).
    expires_at = serializers.SerializerMethodField(
        help_text="The earliest approve-by time of its pending gates; null: none.")
    execute_by = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="Once approved, the deployment must start by this time or the approvals "
                  "lapse (the change waits for approval again); null: no limit.")
    # Conflicts with other changes, freezes and the on-call engineer's time (CAB).
    conflicts = serializers.SerializerMethodField(
        help_text="Other changes and freezes in an overlapping window; they block only "
                  "when the policy says conflicts block (blocker `conflict`).")

    class Meta:
        model = ChangeRequest
        fields = ["id", "reference", "release", "application", "version", "environment",
                  "change_type", "strategy", "risk", "impact", "rollback_plan", "on_call",
                  "scheduled_for", "deploy_when_approved", "status", "requested_by",
                  "created_at", "submitted_at", "closed_at", "gates", "checklist",
                  "blockers", "deployment", "deployer", "fingerprint",
                  "expires_at", "execute_by", "conflicts"]
        fields += ["risk_assessment"]  # risk (docs/cab.md)

    def to_representation(self, instance):
        # Each gate carries the caller's verdict (approvals.eligibility), from their facts
        # read once per response.
        person = self.context.get("person")
        if person is not None and hasattr(instance, "gates"):
            at = self.context.get("at") or timezone.now()
            gates = list(instance.gates.all())
            for gate, verdict in zip(gates, eligibility.gate_verdicts(
                    person=person, change=instance, gates=gates, at=at).values(),
                    strict=True):
                gate.verdict = verdict
        return super().to_representation(instance)

    # Risk (docs/cab.md): the latest assessment; ``risk`` stays the requester's word.
    risk_assessment = serializers.SerializerMethodField(
        help_text="The portal's risk score of the change (0-100) and its factors, as last "
                  "assessed (at submission, a decision or an edit); null before submission.")

    @extend_schema_field(RiskAssessmentOutSerializer(allow_null=True))
    def get_risk_assessment(self, obj) -> dict | None:
        found = risk_selectors.latest_risk(obj)
        return RiskAssessmentOutSerializer(found).data if found is not None else None

    def get_fingerprint(self, obj) -> str:
        digests = self.context.get("digests")
        inputs = self.context.get("inputs")
        key = (obj.release.application_id, obj.environment_id)
        return services.change_version(obj, digests=digests.get(key) if digests else None,
                                       inputs=inputs.get(key) if inputs else None)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_expires_at(self, obj):
        # From the gates the list and the page already loaded: no query per change.
        gates = getattr(obj, "gates", None)
        if gates is None or not hasattr(gates, "all"):
            return None
        due = [g.expires_at for g in gates.all()
               if g.status == Gate.Status.PENDING and g.expires_at is not None]
        return serializers.DateTimeField().to_representation(min(due)) if due else None

    @extend_schema_field(ChecklistItemOutSerializer(many=True))
    def get_checklist(self, obj) -> list[dict]:
        items = getattr(obj, "checklist", None)
        if items is None or not hasattr(items, "all"):
            return []
        return [{"id": i.pk, "text": i.text, "kind": i.kind, "done": i.done,
                 "automatic": bool(i.auto_check), "note": i.note} for i in items.all()]

    def get_blockers(self, obj) -> list[str]:
        rules = self.context.get("rules")
        if rules is not None:
            found = selectors.change_blockers(obj, rules=rules)
        else:
            found = selectors.change_blockers(obj)
        return [b.code for b in found]

    @extend_schema_field(ConflictOutSerializer(many=True))
    def get_conflicts(self, obj) -> list[dict]:
        rules = self.context.get("rules")
        found = rules.conflicts.get(obj.pk, []) if rules is not None else \
            conflicts.conflicts_for([obj]).get(obj.pk, [])
        # Another change the caller may not see is neither named nor linked.
        return [c.as_dict() for c in conflicts.seen_by(found, self.context.get("visible"))]

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
    risk = serializers.ChoiceField(choices=Risk.values, required=False,
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
    # Optional so that clients written before it keep working (docs/api.md); when given
    # and no longer current the decision is refused, and an audit event records whether
    # a decision was made on a version seen or blind.
    fingerprint = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=64,
        help_text="The change's `fingerprint` as read before deciding.")


class RejectInSerializer(DecisionInSerializer):
    comment = serializers.CharField(max_length=5000)


class CancelInSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="",
                                   max_length=2000)


class ChecklistInSerializer(serializers.Serializer):
    done = serializers.BooleanField()
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class DeployOutSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    status = serializers.CharField()
    # The deployment queue: another deployment of the application runs there.
    queued = serializers.BooleanField(
        required=False, help_text="True when the deployment waits behind another deployment "
                                  "of the application in the environment; it starts when "
                                  "its turn comes.")
    queue_position = serializers.IntegerField(
        required=False, allow_null=True,
        help_text="1 for the next to start; null when it starts at once.")
    waiting_for = serializers.IntegerField(
        required=False, allow_null=True,
        help_text="The deployment it waits for (the one holding the target).")


class ChangeFilter(django_filters.FilterSet):
    status = ChoiceFilter(choices=ChangeRequest.Status.choices)
    environment = django_filters.CharFilter(field_name="environment__slug")
    application = django_filters.CharFilter(field_name="release__application__slug")
    change_type = ChoiceFilter(choices=ChangeType.choices)
    release = IdFilter(field_name="release_id")
    requested_by = django_filters.CharFilter(field_name="requested_by__username")

    class Meta:
        model = ChangeRequest
        fields = ["status", "environment", "application", "change_type", "release",
                  "requested_by"]


def _caller(request) -> dict:
    """The caller's facts for the gates' ``can_decide`` and ``eligibility``."""
    at = timezone.now()
    return {"person": selectors.person_facts(request.user, at=at), "at": at,
            "visible": conflicts.visible_environments(request.user)}  # conflicts


def _rules(changes) -> selectors.Rules | None:
    """The blockers' inputs for a page of changes at once."""
    return selectors.rules_for(list(changes)) if changes else None


def _one(request, change) -> dict:
    """The context of a write's answer: the blockers and the conflicts share one reading
    of the rules (a closed change has no blockers to read them for)."""
    rules = None if change.status in selectors.CLOSED else _rules([change])
    return {**_caller(request), "rules": rules}


class ChangeListCreate(ApiMixin, generics.ListAPIView):
    serializer_class = ChangeOutSerializer
    filterset_class = ChangeFilter
    write_scopes = frozenset({REQUEST})

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ChangeRequest.objects.none()
        return risk_selectors.with_latest_risk(selectors.changes_visible_to(self.request.user))

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        body = ChangeOutSerializer(page, many=True, context={
            "rules": _rules(page), "digests": digests_for_many(page or []),
            "inputs": services.run_inputs_for_many(page or []), **_caller(request)}).data
        return self.get_paginated_response(body)

    @extend_schema(request=ChangeInSerializer, responses={201: ChangeOutSerializer},
                   summary="Request a change (submitted for approval unless draft)")
    @idempotent
    def post(self, request):
        data = ChangeInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        change = services.change_request_create(actor=request.user, **data.validated_data)
        change = selectors.change_detail_queryset().get(pk=change.pk)
        return Response(ChangeOutSerializer(change, context=_one(request, change)).data,
                        status=status.HTTP_201_CREATED)


class ChangeDetail(ApiMixin, generics.RetrieveAPIView):
    serializer_class = ChangeOutSerializer

    def get_serializer_context(self):
        return {**super().get_serializer_context(), **_caller(self.request)}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ChangeRequest.objects.none()
        return risk_selectors.with_latest_risk(selectors.changes_visible_to(self.request.user))


class _ChangeAction(ApiView):
    """Looks the change up among those the caller can see: another team's change is a 404."""

    def dispatch(self, request, *args, **kwargs):
        # What is logged while deciding carries the change's id (core.logcontext).
        with logcontext.bind(change_id=kwargs.get("pk")):
            return super().dispatch(request, *args, **kwargs)

    def get_change(self, request, pk: int) -> ChangeRequest:
        return get_object_or_404(selectors.changes_visible_to(request.user), pk=pk)

    def respond(self, change: ChangeRequest, code: int = status.HTTP_200_OK) -> Response:
        change = selectors.change_detail_queryset().get(pk=change.pk)
        return Response(ChangeOutSerializer(change, context=_one(self.request, change)).data,
                        status=code)


class ChangeApprove(_ChangeAction):
    write_scopes = frozenset({APPROVE})

    @extend_schema(request=DecisionInSerializer, responses={200: ChangeOutSerializer},
                   summary="Approve one gate of a change")
    @idempotent
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        data = DecisionInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.gate_approve(actor=request.user, change=change, role=data.validated_data["gate"],
                              comment=data.validated_data["comment"],
                              seen=data.validated_data["fingerprint"])
        return self.respond(change)


class ChangeReject(_ChangeAction):
    write_scopes = frozenset({APPROVE})

    @extend_schema(request=RejectInSerializer, responses={200: ChangeOutSerializer},
                   summary="Reject a change at one gate (comment required)")
    @idempotent
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        data = RejectInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.gate_reject(actor=request.user, change=change, role=data.validated_data["gate"],
                             comment=data.validated_data["comment"],
                             seen=data.validated_data["fingerprint"])
        return self.respond(change)


class ChangeChecklistItem(_ChangeAction):
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=ChecklistInSerializer, responses={200: ChecklistItemOutSerializer},
                   summary="Tick or untick a manual checklist item, with a note")
    @idempotent
    def post(self, request, pk: int, item_id: int):
        change = self.get_change(request, pk)
        data = ChecklistInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = services.checklist_item_set(actor=request.user, change=change, item_id=item_id,
                                           done=data.validated_data["done"],
                                           note=data.validated_data["note"])
        return Response({"id": item.pk, "text": item.text, "kind": item.kind,
                         "done": item.done, "automatic": bool(item.auto_check),
                         "note": item.note})


class ChangeDeploy(_ChangeAction):
    write_scopes = frozenset({DEPLOY})

    @extend_schema(request=None, responses={202: DeployOutSerializer},
                   summary="Deploy an approved change (queued behind a running deployment of its "
                           "application there); not ready: 409 with blockers")
    @idempotent
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        deployment = services.change_request_deploy(actor=request.user, change=change)
        queue = deployment_selectors.queue_state(deployment)
        return Response({"deployment": deployment.pk, "status": deployment.status,
                         "queued": queue["position"] is not None,
                         "queue_position": queue["position"],
                         "waiting_for": queue["waiting_for"]},
                        status=status.HTTP_202_ACCEPTED,
                        headers={"Location": reverse("api-deployment", args=[deployment.pk])})


class ChangeCancel(_ChangeAction):
    write_scopes = frozenset({DEPLOY})

    @extend_schema(request=CancelInSerializer, responses={200: ChangeOutSerializer},
                   summary="Cancel an open change")
    @idempotent
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        data = CancelInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.change_request_cancel(actor=request.user, change=change,
                                       reason=data.validated_data["reason"])
        return self.respond(change)


class ChangeSubmit(_ChangeAction):
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=None, responses={200: ChangeOutSerializer},
                   summary="Submit a draft for approval (the requester only)")
    @idempotent
    def post(self, request, pk: int):
        change = self.get_change(request, pk)
        services.change_request_submit(actor=request.user, change=change)
        return self.respond(change)


class PreflightQuerySerializer(serializers.Serializer):
    change = serializers.IntegerField(
        min_value=1, max_value=2**63 - 1, required=False,
        help_text="An existing change: its own gates, checklist and schedule count.")
    release = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False,
                                       help_text="Release id; or give application and version.")
    application = serializers.SlugField(required=False)
    version = serializers.CharField(required=False, max_length=64)
    environment = serializers.SlugField(required=False)
    change_type = serializers.ChoiceField(choices=ChangeType.choices, default=ChangeType.STANDARD)
    at = BoundedDateTimeField(required=False,
                                   help_text="When the deployment would run (default: now).")

    def validate(self, attrs):
        if attrs.get("change"):
            return attrs
        # A query that names no release (or no environment) names nothing to check: a
        # missing object, as an id that names nothing is (OpenAPI cannot state a rule
        # across query parameters without changing their shape for clients).
        if not attrs.get("release") and not (attrs.get("application") and attrs.get("version")):
            raise serializers.ValidationError({"release": [
                "Give the change id, the release id, or application and version."]},
                code="does_not_exist")
        if not attrs.get("environment"):
            raise serializers.ValidationError({"environment": [
                "Give the environment with the release (or give the change)."]},
                code="does_not_exist")
        return attrs


class PreflightBlockerSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class PreflightOutSerializer(serializers.Serializer):
    release = serializers.IntegerField()
    environment = serializers.CharField()
    change_type = serializers.CharField()
    ready = serializers.BooleanField()
    blockers = PreflightBlockerSerializer(many=True)
    earliest = serializers.DateTimeField(allow_null=True,
                                         help_text="The earliest time windows and freezes "
                                                   "allow; null when they never do.")
    at = serializers.DateTimeField()


class Preflight(ApiView):
    @extend_schema(parameters=[PreflightQuerySerializer], responses={200: PreflightOutSerializer},
                   summary="Everything that would block a deployment, and its earliest time")
    def get(self, request):
        query = PreflightQuerySerializer(data=query_values(request))
        query.is_valid(raise_exception=True)
        params = query.validated_data
        if params.get("change"):
            change = get_object_or_404(selectors.changes_visible_to(request.user),
                                       pk=params["change"])
            result = selectors.preflight_change(change, at=params.get("at"))
            return Response(PreflightOutSerializer({
                "release": change.release_id, "environment": change.environment.slug,
                "change_type": change.change_type, **result}).data)
        preflight = selectors.preflight
        releases = deployment_selectors.releases_visible_to(request.user)
        if params.get("release"):
            release = get_object_or_404(releases, pk=params["release"])
        else:
            release = get_object_or_404(releases, application__slug=params["application"],
                                        version=params["version"])
        environment = get_object_or_404(Environment, slug=params["environment"])
        user = request.user
        if not (user.is_superuser or is_auditor(user)
                or environment.pk in environment_permissions(user)):
            # What runs in an environment is for those who work in it.
            raise NotFound("No such environment.")
        result = preflight(release=release, environment=environment,
                           change_type=params["change_type"], at=params.get("at"))
        return Response(PreflightOutSerializer({
            "release": release.pk, "environment": environment.slug,
            "change_type": params["change_type"], **result}).data)

