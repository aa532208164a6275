"""DORA metrics on a known data set (tests/reporting/conftest.py), with the figures and
bands worked out by hand."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from reporting import metrics
from reporting.metrics_views import dora_for
from tests.reporting.conftest import SINCE, UNTIL


def figures(user, **kwargs):
    params = {"environment": "production", "application": "storefront", "since": SINCE,
              "until": UNTIL, "period": "month"}
    params.update(kwargs)
    return dora_for(user, **params)


def test_january_figures_of_storefront_in_production(known_history, demo):
    january = figures(demo.auditor)["periods"][0]
    assert january["deployments"] == 5  # cancelled and rollback runs do not count
    assert january["succeeded"] == 3
    assert january["failed"] == 2
    assert january["deployment_frequency_per_day"] == round(3 / 31, 4)
    assert january["lead_time_hours"] == 12.0  # median of 12, 48, 12
    assert january["mttr_hours"] == 1.5  # mean of 2 h (next deployment) and 1 h (rollback)
    assert january["change_failure_rate"] == 0.4
    assert january["success_rate"] == 0.6
    assert january["bands"] == {"deployment_frequency": "medium", "lead_time": "elite",
                                "time_to_restore": "high", "change_failure_rate": "low"}


def test_february_counts_a_manual_rollback_as_completed_and_failed(known_history, demo):
    february = figures(demo.auditor)["periods"][1]
    assert february["deployments"] == 3
    assert february["succeeded"] == 2  # 1.5.0 went live, then was rolled back by hand
    assert february["failed"] == 2
    assert february["lead_time_hours"] == 36.0  # median of 48 and 24
    # 6 h to the rollback; 72 h to the fix that landed after the period ended.
    assert february["mttr_hours"] == 39.0
    assert february["change_failure_rate"] == round(2 / 3, 4)
    assert february["success_rate"] == round(2 / 3, 4)
    assert february["bands"]["time_to_restore"] == "medium"


def test_totals_over_both_months(known_history, demo):
    totals = figures(demo.auditor)["totals"]
    assert (totals["deployments"], totals["succeeded"], totals["failed"]) == (8, 5, 4)
    assert totals["restored"] == 4
    assert totals["deployment_frequency_per_day"] == round(5 / 59, 4)
    assert totals["lead_time_hours"] == 24.0  # median of 12, 12, 24, 48, 48
    assert totals["mttr_hours"] == 20.25  # mean of 2, 1, 6, 72
    assert totals["change_failure_rate"] == 0.5
    assert totals["success_rate"] == 0.625
    assert totals["bands"] == {"deployment_frequency": "medium", "lead_time": "high",
                               "time_to_restore": "high", "change_failure_rate": "low"}


def test_figures_per_application_and_environment(known_history, demo):
    body = figures(demo.auditor, application=None)
    by_app = {row["application"]: row for row in body["by_application"]}
    assert set(by_app) == {"billing", "storefront"}
    assert by_app["billing"]["deployments"] == 1
    assert by_app["billing"]["lead_time_hours"] == 3.0
    assert by_app["billing"]["change_failure_rate"] == 0.0
    assert by_app["billing"]["bands"]["change_failure_rate"] == "elite"
    assert by_app["storefront"]["deployments"] == 8
    assert body["totals"]["deployments"] == 9

    staging = figures(demo.auditor, environment="staging")["totals"]
    assert staging["deployments"] == 19 and staging["failed"] == 19
    assert staging["change_failure_rate"] == 1.0
    assert staging["mttr_hours"] is None  # never restored
    assert staging["bands"]["time_to_restore"] is None


def test_weekly_periods_split_the_same_deployments(known_history, demo):
    body = figures(demo.auditor, period="week")
    assert len(body["periods"]) == 9  # 59 days
    assert sum(p["deployments"] for p in body["periods"]) == 8


def test_a_month_without_deployments_has_no_figures_and_no_band(demo):
    body = figures(demo.auditor)
    january = body["periods"][0]
    assert january["deployments"] == 0
    assert january["lead_time_hours"] is None
    assert january["change_failure_rate"] is None
    assert january["bands"] == {"deployment_frequency": None, "lead_time": None,
                                "time_to_restore": None, "change_failure_rate": None}


def test_someone_without_access_to_production_sees_no_figures(known_history, demo):
    assert figures(demo.outsider)["totals"]["deployments"] == 0


@pytest.mark.parametrize("metric,value,expected", [
    ("deployment_frequency", 1.0, "elite"), ("deployment_frequency", 0.99, "high"),
    ("deployment_frequency", 1 / 7, "high"), ("deployment_frequency", 0.1, "medium"),
    ("deployment_frequency", 0.02, "low"),
    ("lead_time", 23.9, "elite"), ("lead_time", 24, "high"), ("lead_time", 200, "medium"),
    ("lead_time", 24 * 31, "low"),
    ("time_to_restore", 0.5, "elite"), ("time_to_restore", 1, "high"),
    ("time_to_restore", 30, "medium"), ("time_to_restore", 24 * 8, "low"),
    ("change_failure_rate", 0.05, "elite"), ("change_failure_rate", 0.1, "high"),
    ("change_failure_rate", 0.15, "medium"), ("change_failure_rate", 0.16, "low"),
])
def test_dora_band_limits(metric, value, expected):
    assert metrics.band(metric, value) == expected


def test_computation_costs_the_same_queries_as_deployments_grow(known_history, demo):
    def count():
        with CaptureQueriesContext(connection) as ctx:
            figures(demo.auditor, application=None)
        return len(ctx)

    before = count()
    from tests.reporting.conftest import at, make_deployment

    app = known_history[1].application
    env = known_history[1].environment
    for day in range(1, 25):
        make_deployment(app, env, version=f"3.{day}.0", committed=at(2, day, 0),
                        finished=at(2, day, 6))
    assert count() == before
