"""REST API v1: replay a proposed policy document over the last months of changes
(docs/policies.md, backtest), and what proposed versions running beside the active one
would have decided otherwise (evaluate mode)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from approvals.models import PolicyShadowDifference
from approvals.policy_backtest import MAX_DOCUMENT, MAX_MONTHS, backtest, may_backtest
from core.api import READ, ApiView
from core.errors import Refused
from core.idempotency import idempotent


class BacktestIn(serializers.Serializer):
    document = serializers.CharField(max_length=MAX_DOCUMENT, trim_whitespace=False,
                                     help_text="The YAML text of the proposed document.")
    months = serializers.IntegerField(
        min_value=1, max_value=MAX_MONTHS, default=6,
        help_text=f"How many months back to replay, 1 to {MAX_MONTHS}: the changes "
                  "submitted since then.")


class GatesChange(serializers.Serializer):
    active = serializers.DictField(child=serializers.IntegerField(),
                                   help_text="{role: approvals} the version in force set.")
    proposed = serializers.DictField(child=serializers.IntegerField(),
                                     help_text="{role: approvals} the document would set.")
    rules = serializers.ListField(child=serializers.CharField(),
                                  help_text="The document's rules whose condition held.")


class BlockerOut(serializers.Serializer):
    code = serializers.CharField()
    reason = serializers.CharField()


class BlockersChange(serializers.Serializer):
    added = BlockerOut(many=True, help_text="Blockers the document adds at the start.")
    removed = BlockerOut(many=True, help_text="Blockers of the version in force it lifts.")


class StartChange(serializers.Serializer):
    active = serializers.BooleanField(help_text="The version in force let it start then.")
    proposed = serializers.BooleanField(help_text="The document lets it start then.")
    earliest = serializers.DateTimeField(
        allow_null=True, help_text="For a refused start: the first half hour within a "
                                   "week after it that the document allows; null if none.")


class DifferenceOut(serializers.Serializer):
    change = serializers.IntegerField(help_text="The change's id.")
    reference = serializers.CharField()
    environment = serializers.CharField()
    change_type = serializers.CharField()
    application = serializers.CharField()
    status = serializers.CharField()
    submitted_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    started_by = serializers.CharField(allow_null=True)
    kinds = serializers.ListField(child=serializers.ChoiceField(
        choices=["gates", "blockers", "start"]), help_text="What would have differed.")
    gates = GatesChange(required=False)
    blockers = BlockersChange(required=False)
    start = StartChange(required=False)
    errors = serializers.ListField(child=serializers.CharField(),
                                   help_text="Conditions of the document that failed to "
                                             "evaluate for this change.")
    active_version = serializers.IntegerField(help_text="The version in force then.")
    version_basis = serializers.ChoiceField(
        choices=["recorded", "in_force", "first_version"],
        help_text="recorded: named by the audited decision; in_force: by its activation "
                  "time; first_version: history older than the versions.")
    start_version = serializers.IntegerField(allow_null=True)


class EnvironmentCounts(serializers.Serializer):
    changes = serializers.IntegerField()
    differing = serializers.IntegerField()
    gates = serializers.IntegerField()
    blocked = serializers.IntegerField()
    start_refused = serializers.IntegerField()
    start_allowed = serializers.IntegerField()


class Counts(EnvironmentCounts):
    by_environment = serializers.DictField(child=EnvironmentCounts())


class BacktestOut(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    digest = serializers.CharField(help_text="The proposed document's digest.")
    counts = Counts()
    differences = DifferenceOut(many=True, help_text="Newest last; at most 2000 (see "
                                                     "truncated), the counts cover all.")
    truncated = serializers.BooleanField()
    evaluations = serializers.IntegerField(help_text="Distinct evaluations it took.")
    note = serializers.CharField(allow_blank=True)


def require_backtest(user) -> None:
    if not may_backtest(user):
        raise Refused("backtests are for auditors, admins, and who proposes or decides "
                      "policy versions", code="not_permitted")


class PolicyBacktest(ApiView):
    """Replay the document over the changes submitted in the last ``months`` months,
    with their facts at the time, beside the version then in force; changes nothing.
    Auditors, admins, who may propose policy versions, CAB and security."""

    write_scopes = frozenset({READ})

    @extend_schema(request=BacktestIn, responses={200: BacktestOut},
                   summary="Backtest a policy document over past changes")
    @idempotent
    def post(self, request):
        require_backtest(request.user)
        data = BacktestIn(data=request.data)
        data.is_valid(raise_exception=True)
        report = backtest(data.validated_data["document"],
                          months=data.validated_data["months"])
        return Response(BacktestOut(report).data)


class ShadowQuery(serializers.Serializer):
    version = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1,
                                       help_text="Only this proposed version's.")


class ShadowDifferenceOut(serializers.Serializer):
    version = serializers.IntegerField(source="version.number",
                                       help_text="The proposed version.")
    change = serializers.IntegerField(source="change_id")
    action = serializers.ChoiceField(choices=["submit", "start"])
    active_digest = serializers.CharField()
    active = serializers.DictField(help_text="gates, rules, blockers (codes), "
                                             "start_allowed of the active version.")
    proposed = serializers.DictField(help_text="The same of the proposed version; empty "
                                               "when it could not be evaluated.")
    error = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField()


class PolicyShadowDifferences(ApiView):
    """Evaluate mode: the latest live decisions (at most 200, newest first) on which a
    proposed policy version would have decided otherwise than the active one. Who may
    backtest may read them."""

    @extend_schema(parameters=[ShadowQuery], responses={200: ShadowDifferenceOut(many=True)},
                   summary="Where proposed policy versions differed on live decisions")
    def get(self, request):
        require_backtest(request.user)
        query = ShadowQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = PolicyShadowDifference.objects.select_related("version").order_by("-at", "-id")
        if "version" in query.validated_data:
            rows = rows.filter(version__number=query.validated_data["version"])
        return Response(ShadowDifferenceOut(rows[:200], many=True).data)
