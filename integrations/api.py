"""REST API v1 of the incoming hooks: CI, push and Alertmanager."""

from __future__ import annotations

import logging

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from catalog.api import ReleaseInSerializer, ReleaseOutSerializer
from catalog.models import Release
from core import logcontext
from core.api import DEPLOY, REQUEST, ApiView, BoundedDateTimeField
from core.idempotency import idempotent
from identity.authentication import BearerTokenAuthentication
from integrations import hooks
from integrations.schema import HOOK_HEADERS, HookDuplicateSerializer

logger = logging.getLogger(__name__)


def delivery_id_of(keys) -> str | None:
    """The id logs name a delivery by: the sender's delivery id, else the digest of the
    signed body (``hooks`` keys are ``id:<id>`` and ``body:<sha256>``)."""
    for prefix in ("id:", "body:"):
        for key in keys:
            if key.startswith(prefix):
                return key[len(prefix):]
    return None


class HookView(ApiView):
    authentication_classes = [hooks.HookSignatureAuthentication, BearerTokenAuthentication]
    hook_name = ""
    schema_request_headers = HOOK_HEADERS

    def once(self, request, apply, applied=None):
        """Apply this delivery unless it was applied before: (applied, result)."""
        auth = request.auth
        keys = (auth.delivery_keys if isinstance(auth, hooks.HookCredential)
                else hooks.delivery_keys_from_headers(request.headers))
        # What is logged while applying it carries the delivery's id: the sender's, or
        # for a delivery without one, the digest of its signed body.
        delivery_id = delivery_id_of(keys)
        with logcontext.bind(delivery_id=delivery_id):
            logger.info("%s hook: delivery %s received", self.hook_name,
                        delivery_id or "without an id")
            return hooks.hook_delivery_once(actor=request.user, hook=self.hook_name,
                                            keys=keys, apply=apply, applied=applied)

    @staticmethod
    def duplicate() -> Response:
        # 200, not an error: the sender must stop redelivering what was applied.
        return Response({"duplicate": True,
                         "detail": "This delivery was already received and applied; "
                                   "nothing was applied again."})


class CiHookInSerializer(serializers.Serializer):
    release = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    check = serializers.RegexField(r"^[a-z0-9_.-]{1,50}$", required=False,
                                   help_text="tests, security_scan, lint, ...")
    status = serializers.ChoiceField(choices=["passed", "failed"], required=False)
    url = serializers.URLField(required=False, allow_blank=True, default="", max_length=500)
    summary = serializers.CharField(required=False, allow_blank=True, default="",
                                    max_length=2000)
    critical = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000,
                                        help_text="security_scan: critical findings.")
    authors = serializers.ListField(child=serializers.CharField(max_length=150),
                                    required=False, max_length=500,
                                    help_text="Usernames of the commits' authors.")
    mergers = serializers.ListField(child=serializers.CharField(max_length=150),
                                    required=False, max_length=500,
                                    help_text="Usernames of who merged the commits.")
    reported_at = BoundedDateTimeField(
        required=False, help_text="When the check finished (default: now). A result older "
                                  "than the one held for the check is not applied.")

    # What ``validate`` enforces, in the schema: check and status come together.
    schema_rules = {"dependentRequired": {"check": ["status"], "status": ["check"]}}

    def validate(self, attrs):
        if bool(attrs.get("check")) != bool(attrs.get("status")):
            raise serializers.ValidationError({"status": [
                "Send check and status together."]})
        # A report with no check, authors or mergers records nothing new: it answers the
        # release as it stands (any body the schema allows is answered).
        return attrs


class CiHookOutSerializer(ReleaseOutSerializer):
    superseded = serializers.BooleanField(
        read_only=True, help_text="True when the reported result was older than the one "
                                  "held for the check and so was not applied.")

    class Meta(ReleaseOutSerializer.Meta):
        fields = [*ReleaseOutSerializer.Meta.fields, "superseded"]


def or_duplicate(name: str, answer) -> PolymorphicProxySerializer:
    """A hook's answer: what it did, or that the delivery was already applied."""
    return PolymorphicProxySerializer(component_name=name, resource_type_field_name=None,
                                      serializers=[answer, HookDuplicateSerializer])


class CiHook(HookView):
    hook_name = "ci"
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=CiHookInSerializer,
                   responses={200: or_duplicate("CiHookAnswer", CiHookOutSerializer)},
                   summary="CI reports a check result and the release's authors and mergers")
    @idempotent
    def post(self, request):
        data = CiHookInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = dict(data.validated_data)
        release = get_object_or_404(Release.objects.select_related("application"),
                                    pk=params.pop("release"))
        applied, release = self.once(request, lambda: hooks.release_checks_record(
            actor=request.user, release=release, **params))
        if not applied:
            return self.duplicate()
        return Response({**ReleaseOutSerializer(release).data,
                         "superseded": release.report_superseded})


class PushHookInSerializer(ReleaseInSerializer):
    ref = serializers.CharField(required=False, allow_blank=True, default="", max_length=200,
                                help_text="The branch pushed, e.g. refs/heads/main.")
    authors = serializers.ListField(child=serializers.CharField(max_length=150),
                                    required=False, max_length=500)
    mergers = serializers.ListField(child=serializers.CharField(max_length=150),
                                    required=False, max_length=500)


class PushHookOutSerializer(serializers.Serializer):
    release = serializers.IntegerField()
    release_created = serializers.BooleanField()
    change = serializers.IntegerField()
    deployment = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(allow_null=True, help_text="The deployment's status.")


class PushHook(HookView):
    hook_name = "push"
    write_scopes = frozenset({REQUEST, DEPLOY})

    @extend_schema(request=PushHookInSerializer, responses={202: PushHookOutSerializer,
                                                            200: HookDuplicateSerializer},
                   summary="A push: register the release and deploy it to development "
                           "without approvals (SOP 2.2)")
    @idempotent
    def post(self, request):
        data = PushHookInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        applied, result = self.once(request, lambda: hooks.push_deploy(
            actor=request.user, **data.validated_data))
        if not applied:
            return self.duplicate()
        release, change, deployment, created = result
        return Response({"release": release.pk, "release_created": created,
                         "change": change.pk,
                         "deployment": deployment.pk if deployment else None,
                         "status": deployment.status if deployment else None},
                        status=status.HTTP_202_ACCEPTED)


class AlertSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["firing", "resolved"])
    labels = serializers.DictField(child=serializers.CharField(allow_blank=True,
                                                               max_length=1000))
    annotations = serializers.DictField(child=serializers.CharField(allow_blank=True,
                                                                    max_length=5000),
                                        required=False, default=dict)
    startsAt = serializers.CharField(required=False, allow_blank=True)  # noqa: N815
    endsAt = serializers.CharField(required=False, allow_blank=True)  # noqa: N815
    generatorURL = serializers.CharField(required=False, allow_blank=True)  # noqa: N815
    fingerprint = serializers.CharField(required=False, allow_blank=True, max_length=64)


class AlertmanagerInSerializer(serializers.Serializer):
    """Prometheus Alertmanager's webhook body (version 4)."""

    version = serializers.CharField(required=False, allow_blank=True)
    groupKey = serializers.CharField(required=False, allow_blank=True)  # noqa: N815
    status = serializers.ChoiceField(choices=["firing", "resolved"], required=False)
    receiver = serializers.CharField(required=False, allow_blank=True)
    alerts = AlertSerializer(many=True, max_length=1000)


class AlertOutcomeSerializer(serializers.Serializer):
    alertname = serializers.CharField(allow_blank=True)
    fingerprint = serializers.CharField(allow_blank=True)
    outcome = serializers.ChoiceField(choices=["rolled_back", "notified", "no_deployment",
                                               "refused", "duplicate"])
    code = serializers.CharField(required=False)
    detail = serializers.CharField(required=False)
    deployment = serializers.IntegerField(required=False)
    rollback_deployment = serializers.IntegerField(required=False, allow_null=True)


class AlertmanagerOutSerializer(serializers.Serializer):
    results = AlertOutcomeSerializer(many=True)


class AlertmanagerHook(HookView):
    hook_name = "alertmanager"
    write_scopes = frozenset({DEPLOY})

    @extend_schema(request=AlertmanagerInSerializer,
                   responses={200: or_duplicate("AlertmanagerAnswer",
                                                AlertmanagerOutSerializer)},
                   summary="Alertmanager webhook: action=trigger_rollback rolls back the latest "
                           "deployment the alert names (SOP 9.2); other alerts are recorded")
    @idempotent
    def post(self, request):
        data = AlertmanagerInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        applied, results = self.once(request, lambda: hooks.alerts_receive(
            actor=request.user, payload=data.validated_data), applied=hooks.alerts_applied)
        if not applied:
            return self.duplicate()
        return Response({"results": results})

