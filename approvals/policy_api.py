"""REST API v1: the policy document (docs/policies.md). The active version, a proposal
of the next one, and a check of a document's examples."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from approvals import services
from approvals.models import PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import example_failures
from core.api import REQUEST, ApiView, BoundedDateTimeField
from core.errors import NotFound
from core.idempotency import idempotent

MAX_DOCUMENT = 200_000  # characters: a policy is a page or two, never a data file


class PolicyCurrentOut(serializers.Serializer):
    version = serializers.IntegerField(help_text="The active version's number.")
    digest = serializers.CharField(help_text="SHA-256 of the document's canonical text; "
                                             "decisions' audit events name it.")
    document = serializers.CharField(help_text="The document's YAML text.")
    effective_at = serializers.DateTimeField(allow_null=True)
    activated_at = serializers.DateTimeField(allow_null=True)


class PolicyProposeIn(serializers.Serializer):
    document = serializers.CharField(max_length=MAX_DOCUMENT, trim_whitespace=False,
                                     help_text="The YAML text of the proposed document.")
    effective_at = BoundedDateTimeField(
        required=False, allow_null=True, default=None,
        help_text="When it binds once approved; default: as soon as it is approved.")
    summary = serializers.CharField(required=False, allow_blank=True, max_length=300,
                                    default="")


class PolicyVersionOut(serializers.ModelSerializer):
    version = serializers.IntegerField(source="number")
    status = serializers.ChoiceField(choices=PolicyVersion.Status.choices)
    proposed_by = serializers.CharField(source="proposed_by.username", default=None,
                                        allow_null=True)
    based_on = serializers.IntegerField(source="based_on.number", default=None,
                                        allow_null=True,
                                        help_text="The version active when it was proposed.")
    gates = serializers.DictField(child=serializers.IntegerField(),
                                  help_text="Approvals it needs: {role: count}.")
    url = serializers.SerializerMethodField()

    class Meta:
        model = PolicyVersion
        fields = ["version", "digest", "status", "gates", "effective_at", "proposed_by",
                  "based_on", "summary", "created_at", "url"]

    def get_url(self, version) -> str:
        return reverse("policy-version", args=[version.number])


class PolicyTestIn(serializers.Serializer):
    document = serializers.CharField(max_length=MAX_DOCUMENT, trim_whitespace=False)


class PolicyTestOut(serializers.Serializer):
    passed = serializers.BooleanField(help_text="Every example gives what it expects.")
    digest = serializers.CharField()
    examples = serializers.IntegerField(help_text="How many examples the document ships.")
    failures = serializers.ListField(child=serializers.CharField(),
                                     help_text="Each expectation that failed, in words.")
    problems = serializers.ListField(
        child=serializers.CharField(),
        help_text="Why the document cannot be read (\"path: message\"); then nothing ran, "
                  "`passed` is false and `digest` is empty.")


class PolicyCurrent(ApiView):
    @extend_schema(responses={200: PolicyCurrentOut},
                   summary="The active policy document, its version and digest")
    def get(self, request):
        version = services.active_version()
        if version is None:
            raise NotFound("the portal has no policy version yet", code="no_policy")
        return Response(PolicyCurrentOut({
            "version": version.number, "digest": version.digest,
            "document": version.document, "effective_at": version.effective_at,
            "activated_at": version.activated_at}).data)


class PolicyPropose(ApiView):
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=PolicyProposeIn, responses={201: PolicyVersionOut},
                   summary="Propose a new version of the policy document (it binds once "
                           "its gates approve it and its time comes)")
    @idempotent
    def post(self, request):
        data = PolicyProposeIn(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        version = services.policy_propose(actor=request.user, text=fields["document"],
                                          effective_at=fields["effective_at"],
                                          summary=fields["summary"])
        return Response(PolicyVersionOut(version).data, status=status.HTTP_201_CREATED)


class PolicyTest(ApiView):
    write_scopes = frozenset({REQUEST})

    @extend_schema(request=PolicyTestIn, responses={200: PolicyTestOut},
                   summary="Check a policy document and run its examples; changes nothing")
    @idempotent
    def post(self, request):
        data = PolicyTestIn(data=request.data)
        data.is_valid(raise_exception=True)
        # A test reports on the document it is given, an unreadable one included: its
        # problems are the answer (proposing one is refused with the same problems).
        try:
            document = policy_document.parse(data.validated_data["document"])
        except policy_document.PolicyInvalid as exc:
            return Response(PolicyTestOut({"passed": False, "digest": "", "examples": 0,
                                           "failures": [], "problems": exc.problems}).data)
        failures = example_failures(document)
        return Response(PolicyTestOut({
            "passed": not failures, "digest": document.digest,
            "examples": len(document.examples), "failures": failures,
            "problems": []}).data)
