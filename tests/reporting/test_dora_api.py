"""GET /api/v1/metrics/dora/: the same figures over HTTP, and its refusals."""

from __future__ import annotations

from tests.reporting.conftest import SINCE, UNTIL

URL = "/api/v1/metrics/dora/"
RANGE = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}


def test_api_answers_the_figures_by_month_with_bands(known_history, demo, api):
    response = api(demo.auditor).get(URL, {**RANGE, "application": "storefront"})
    assert response.status_code == 200
    body = response.json()
    assert body["environment"] == "production" and body["period"] == "month"
    assert [p["start"][:10] for p in body["periods"]] == ["2025-01-01", "2025-02-01"]
    assert body["totals"]["mttr_hours"] == 20.25
    assert body["totals"]["bands"]["lead_time"] == "high"
    assert body["periods"][0]["change_failure_rate"] == 0.4


def test_api_filters_by_environment_and_application(known_history, demo, api):
    client = api(demo.auditor)
    body = client.get(URL, {**RANGE, "environment": "all"}).json()
    assert body["totals"]["deployments"] == 9 + 19
    body = client.get(URL, {**RANGE, "application": "billing"}).json()
    assert body["totals"]["deployments"] == 1


def test_all_environments_cover_only_those_the_caller_may_see(known_history, demo, api):
    # CAB holds permissions on production only: staging's failures stay out.
    body = api(demo.cab).get(URL, {**RANGE, "environment": "all"}).json()
    assert body["totals"]["deployments"] == 9


def test_api_refuses_anonymous_callers(demo, api):
    assert api().get(URL).status_code == 401


def test_api_says_what_is_wrong_with_the_query(demo, api):
    client = api(demo.auditor)
    cases = [
        ({"environment": "moon"}, "environment"),
        ({"application": "nope"}, "application"),
        ({"period": "year"}, "period"),
        ({"since": "yesterday"}, "since"),
        ({"until": ""}, "until"),
    ]
    for params, field in cases:
        response = client.get(URL, params)
        assert response.status_code == 400, params
        assert field in response.json()["fields"], params


def test_any_two_dates_are_answered_with_the_range_counted(demo, api):
    """A rule between two values is beyond what the schema states: the API answers any
    two dates it allows, and its since and until say what was counted."""
    client = api(demo.auditor)
    reversed_range = client.get(URL, {"since": "2025-03-01T00:00:00Z",
                                      "until": "2025-01-01T00:00:00Z"}).json()
    assert (reversed_range["since"], reversed_range["until"]) == (
        "2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z")
    long_range = client.get(URL, {"since": "2010-01-01T00:00:00Z",
                                  "until": "2025-01-01T00:00:00Z"}).json()
    assert long_range["since"] == "2021-12-30T00:00:00Z"  # 3 * 366 days before until
    daily = client.get(URL, {"since": "2024-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z",
                             "period": "day"}).json()
    assert daily["since"] == "2024-10-01T00:00:00Z" and len(daily["periods"]) == 92


def test_default_range_covers_six_calendar_months(demo, api):
    body = api(demo.auditor).get(URL).json()
    assert len(body["periods"]) == 6
    assert body["periods"][0]["start"][8:10] == "01"
