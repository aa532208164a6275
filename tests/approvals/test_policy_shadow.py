"""Evaluate mode: a proposed policy version runs beside the active one on live
decisions, records where it would differ, and never binds nor fails the decision."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from approvals import services
from approvals.models import ChangeRequest, PolicyShadowDifference, PolicyVersion
from audit.models import AuditEvent
from core import clock
from tests.approvals.test_controls import approve_all
from tests.factories import request_change

STAGING_SECURITY = {"name": "staging-security", "when": 'change.environment == "staging"',
                    "gates": {"security": 1}}
FRIDAY_AFTERNOON = {"name": "no-friday-afternoon-staging",
                    "when": 'change.environment == "staging" && local.weekday == "friday" '
                            "&& local.hour >= 12",
                    "reason": "nobody is around to watch it over the weekend"}


def propose(demo, **sections) -> PolicyVersion:
    data = yaml.safe_load(PolicyVersion.objects.get(status="active").document)
    data.pop("examples", None)  # the first version's examples describe it, not these
    data.update(sections)
    return services.policy_propose(actor=demo.techlead,
                                   text=yaml.safe_dump(data, sort_keys=False))


def next_friday(hour: int):
    now = clock.now()
    day = now + timedelta(days=(4 - now.weekday()) % 7 or 7)
    return day.replace(hour=hour, minute=30, second=0, microsecond=0)


def test_a_submission_records_the_gates_a_proposed_version_would_set_without_binding(demo):
    proposed = propose(demo, rules=[STAGING_SECURITY])
    change = request_change(demo.engineer, "staging")
    # The live decision took the active version's gates.
    assert sorted(change.gates.values_list("role", flat=True)) == ["qa", "tech_lead"]
    difference = PolicyShadowDifference.objects.get(change=change)
    assert difference.version == proposed
    assert difference.action == "submit"
    assert difference.active["gates"] == {"qa": 1, "tech_lead": 1}
    assert difference.proposed["gates"] == {"qa": 1, "security": 1, "tech_lead": 1}
    assert difference.proposed["rules"] == ["staging-security"]
    assert difference.error == ""
    event = AuditEvent.objects.get(action="policy.shadow_differed")
    assert event.after["change"] == change.pk
    assert event.after["policy_digest"] == proposed.digest
    assert event.after["active_policy_digest"] == services.active_version().digest


def test_a_proposed_version_that_agrees_records_nothing(demo):
    propose(demo, description="the same rules, said again")
    request_change(demo.engineer, "staging")
    assert not PolicyShadowDifference.objects.exists()


def test_a_proposed_document_that_errs_is_recorded_and_the_submission_stands(demo):
    propose(demo, rules=[{"name": "broken", "when": "change.no_such_fact > 1",
                          "gates": {"security": 1}}])
    change = request_change(demo.engineer, "staging")
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    difference = PolicyShadowDifference.objects.get(change=change)
    assert "rule broken" in difference.error
    assert sorted(change.gates.values_list("role", flat=True)) == ["qa", "tech_lead"]


@pytest.mark.parametrize("hour, refused", [(13, True), (9, False)])
def test_a_start_the_proposed_version_would_refuse_still_starts(demo, settings, hour,
                                                                 refused):
    settings.PORTAL_TASK_DISPATCH = "hold"
    change = approve_all(request_change(demo.engineer, "staging"), demo)
    proposed = propose(demo, start_restrictions=[FRIDAY_AFTERNOON])
    moment = next_friday(hour)
    with clock.use(lambda: moment):
        services.change_request_deploy(actor=demo.engineer, change=change)
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    starts = PolicyShadowDifference.objects.filter(change=change, action="start")
    if not refused:
        assert not starts.exists()
        return
    [difference] = starts
    assert difference.version == proposed
    assert difference.active["start_allowed"] is True
    assert difference.proposed["start_allowed"] is False
    assert difference.proposed["blockers"] == ["start_restricted"]


def test_the_backtest_page_shows_the_differences_of_evaluate_mode(demo, client):
    propose(demo, rules=[STAGING_SECURITY])
    change = request_change(demo.engineer, "staging")
    client.force_login(demo.auditor)
    page = client.get("/policies/backtest/")
    assert page.status_code == 200
    body = page.content.decode()
    assert f'href="/changes/{change.pk}/"' in body
    assert "data-shadow=" in body


def test_the_api_lists_the_differences_to_who_may_backtest(demo, api):
    proposed = propose(demo, rules=[STAGING_SECURITY])
    change = request_change(demo.engineer, "staging")
    answer = api(demo.auditor).get(f"/api/v1/policies/shadow?version={proposed.number}")
    assert answer.status_code == 200, answer.content
    [row] = answer.json()
    assert (row["version"], row["change"], row["action"]) == (proposed.number, change.pk,
                                                              "submit")
    assert row["proposed"]["gates"] == {"qa": 1, "security": 1, "tech_lead": 1}
    assert api(demo.auditor).get("/api/v1/policies/shadow?version=999").json() == []
    refused = api(demo.engineer).get("/api/v1/policies/shadow")
    assert refused.status_code == 403 and refused.json()["code"] == "not_permitted"
