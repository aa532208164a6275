"""The policy backtest benchmark works in a tiny configuration: generated deployed
changes with their submission risk scores are replayed under the worked examples, in
the same number of queries whatever their number."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import RiskAssessment
from approvals.policy_backtest import backtest
from bench import policy_backtest_bench
from bench.audit_bench import generate_deployments


def test_the_backtest_benchmark_replays_generated_changes_in_constant_queries(demo):
    def replay(expected: int) -> int:
        policy_backtest_bench.scores_for_changes()
        with CaptureQueriesContext(connection) as ctx:
            report = backtest(policy_backtest_bench.proposed_text(), months=6)
        assert report["counts"]["changes"] == expected
        return len(ctx.captured_queries)

    generate_deployments(30, years=0.4)
    few = replay(30)
    assert RiskAssessment.objects.filter(trigger="submitted").count() == 30
    generate_deployments(60, years=0.4)
    assert replay(90) == few
