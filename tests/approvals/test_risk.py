"""The risk score of a change (docs/cab.md): each factor moves the score as
documented, the score is kept and audited at submission, decisions and edits, a policy's
threshold adds its extra gate, and the API and pages show it."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from types import SimpleNamespace

import pytest
import yaml
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals import risk, services
from approvals.models import (
    ApprovalPolicy,
    ChangeRequest,
    GateRole,
    MaintenanceWindow,
    RiskAssessment,
)
from approvals.policy import rows as policy_rows
from approvals.risk_selectors import risk_facts
from audit.models import AuditEvent
from catalog.models import Application, Environment
from core import clock
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

# Pure: constructed changes ------------------------------------------------------------

STAGING = SimpleNamespace(slug="staging", name="Staging", production=False)
PRODUCTION = SimpleNamespace(slug="production", name="Production", production=True)


def change(**kw):
    release = SimpleNamespace(migration_plan=kw.pop("migration_plan", []),
                              checks=kw.pop("checks", {}))
    fields = {"change_type": "standard", "strategy": "canary", "environment": STAGING,
              "release": release, "scheduled_for": None, **kw}
    return SimpleNamespace(**fields)


FACTS = risk.RiskFacts(targets=20, batch_size=2)


def points(result, name):
    return next(f["points"] for f in result.factors if f["name"] == name)


def test_a_standard_canary_change_in_staging_scores_low():
    result = risk.assess(change(), facts=FACTS)
    assert result.score < 30 and result.band == "low"
    assert [f["name"] for f in result.factors] == list(risk.WEIGHTS)
    for f in result.factors:
        assert set(f) == {"name", "label", "value", "weight", "points", "explanation"}


def test_the_worst_change_scores_high_and_never_above_100():
    worst = change(change_type="emergency", strategy="all_at_once", environment=PRODUCTION,
                   migration_plan=[{"name": "0042_drop_orders", "kind": "irreversible"}],
                   checks={"diff": {"status": "passed", "commits": 400, "files": 900}})
    facts = risk.RiskFacts(targets=4, deployments=10, failures=6, rollbacks=5)
    result = risk.assess(worst, facts=facts)
    assert sum(f["weight"] for f in result.factors) > 100  # every factor at its weight
    assert all(f["points"] == f["weight"] for f in result.factors)
    assert result.score == 100 and result.band == "high"


@pytest.mark.parametrize("change_type,expected", [("standard", 0), ("hotfix", 9),
                                                  ("emergency", 15)])
def test_the_change_type_adds_its_points(change_type, expected):
    assert points(risk.assess(change(change_type=change_type), facts=FACTS),
                  "change_type") == expected


def test_production_adds_the_environment_and_the_window_factors():
    base = risk.assess(change(), facts=FACTS)
    prod = risk.assess(change(environment=PRODUCTION), facts=FACTS)
    assert points(prod, "environment") == 15 and points(prod, "outside_window") == 10
    assert prod.score == base.score + 25


def test_a_production_change_scheduled_inside_a_window_is_not_outside_it():
    when = datetime(2030, 1, 1, 23, 0)
    inside = risk.RiskFacts(targets=20, windows=2, in_window=True)
    outside = risk.RiskFacts(targets=20, windows=2, in_window=False)
    assert points(risk.assess(change(environment=PRODUCTION, scheduled_for=when),
                              facts=inside), "outside_window") == 0
    result = risk.assess(change(environment=PRODUCTION, scheduled_for=when), facts=outside)
    factor = next(f for f in result.factors if f["name"] == "outside_window")
    assert factor["points"] == 10 and "outside every maintenance window" in factor["explanation"]


@pytest.mark.parametrize("strategy,targets,batch,expected_share,expected_points", [
    ("all_at_once", 4, 1, 100, 15),
    ("rolling", 10, 2, 20, 3),
    ("rolling", 4, 4, 100, 15),
    ("canary", 20, 1, 5, 1),       # 5% of 20: one target
    ("canary", 4, 1, 25, 4),       # 5% of 4 is still one target: 25%
    ("blue_green", 4, 1, 100, 4),  # all traffic, but instantly reversible
    ("canary", 0, 1, 100, 15),     # no targets: the application deploys as one unit
])
def test_the_share_at_the_first_step_sets_the_exposure(strategy, targets, batch,
                                                       expected_share, expected_points):
    result = risk.assess(change(strategy=strategy),
                         facts=risk.RiskFacts(targets=targets, batch_size=batch))
    factor = next(f for f in result.factors if f["name"] == "exposure")
    assert (factor["value"], factor["points"]) == (expected_share, expected_points)


@pytest.mark.parametrize("plan,expected", [
    ([], 0),
    ([{"name": "0001_add", "kind": "expand"}], 0),
    ([{"name": "0001_add", "kind": "expand"}, {"name": "0002_drop", "kind": "contract"}], 9),
    ([{"name": "0002_drop", "kind": "contract"}, {"name": "0003_x", "kind": "irreversible"}],
     15),
])
def test_the_worst_migration_sets_the_migrations_factor(plan, expected):
    assert points(risk.assess(change(migration_plan=plan), facts=FACTS),
                  "migrations") == expected


def test_the_failure_rate_scales_to_its_weight_at_30_percent():
    def scored(deployments, failures):
        facts = risk.RiskFacts(targets=20, deployments=deployments, failures=failures)
        return points(risk.assess(change(), facts=facts), "failure_rate")

    assert scored(0, 0) == 0
    assert scored(10, 0) == 0
    assert scored(10, 1) == 5
    assert scored(10, 3) == 15
    assert scored(10, 9) == 15


def test_the_release_size_counts_only_when_ci_reports_it():
    unreported = risk.assess(change(), facts=FACTS)
    factor = next(f for f in unreported.factors if f["name"] == "release_size")
    assert (factor["points"], factor["explanation"]) == (0, "not reported by CI")
    small = change(checks={"diff": {"status": "passed", "commits": 5, "files": 10}})
    large = change(checks={"diff": {"status": "passed", "commits": 25, "files": 200}})
    assert points(risk.assess(small, facts=FACTS), "release_size") == 1
    assert points(risk.assess(large, facts=FACTS), "release_size") == 10


def test_recent_rollbacks_add_up_to_their_weight():
    assert [points(risk.assess(change(), facts=risk.RiskFacts(targets=20, rollbacks=n)),
                   "rollbacks") for n in (0, 1, 3, 7)] == [0, 3, 10, 10]


def test_bands():
    assert [risk.band(s) for s in (0, 29, 30, 59, 60, 100)] == [
        "low", "low", "medium", "medium", "high", "high"]


# Facts from the database, in bulk ---------------------------------------------------------

def _ended(app, environment, status, days_ago, kind="deploy"):
    release = ReleaseFactory(application=app)
    at = clock.now() - timedelta(days=days_ago)
    return Deployment.objects.create(application=app, environment=environment,
                                     release=release, status=status, kind=kind,
                                     created_at=at, finished_at=at)


def test_facts_are_read_for_many_changes_in_a_constant_number_of_queries(demo):
    app = Application.objects.get(slug="storefront")
    production = Environment.objects.get(slug="production")
    for status, days in (("succeeded", 3), ("failed", 5), ("rolled_back", 10),
                         ("rolled_back", 60), ("succeeded", 120), ("cancelled", 2)):
        _ended(app, production, status, days)
    one = [request_change(demo.engineer, environment="production", strategy="rolling")]
    with CaptureQueriesContext(connection) as few:
        facts = risk_facts(ChangeRequest.objects.with_related().filter(pk=one[0].pk))
    fact = facts[one[0].pk]
    # 90 days: 4 deployments ended (the cancelled one and the one 120 days ago do not
    # count), 3 of them failed or rolled back; 30 days: one rollback.
    assert (fact.deployments, fact.failures, fact.rollbacks) == (4, 3, 1)
    assert (fact.targets, fact.windows) == (4, 2)
    many = one + [request_change(demo.engineer, environment=e) for e in
                  ("staging", "development", "production", "staging")]
    with CaptureQueriesContext(connection) as more:
        facts = risk_facts(ChangeRequest.objects.with_related()
                           .filter(pk__in=[c.pk for c in many]))
    assert len(facts) == 5
    assert len(more.captured_queries) == len(few.captured_queries)


def test_a_change_scheduled_inside_a_window_is_read_as_inside(demo):
    production = Environment.objects.get(slug="production")
    MaintenanceWindow.objects.filter(environment=production).delete()
    start = clock.now() + timedelta(days=2)
    MaintenanceWindow.objects.create(environment=production, weekday=start.weekday(),
                                     start_time=time(0, 0), end_time=time(23, 59),
                                     timezone="UTC")
    inside = start.replace(hour=12, minute=0)
    c = ChangeRequest.objects.create(release=ReleaseFactory(), environment=production,
                                     requested_by=demo.engineer, scheduled_for=inside)
    assert risk_facts([c])[c.pk].in_window is True
    c.scheduled_for = None
    assert risk_facts([c])[c.pk].in_window is False


# Kept and audited -------------------------------------------------------------------------

def test_submission_and_each_decision_keep_and_audit_an_assessment(demo):
    c = request_change(demo.engineer, environment="staging")
    first = RiskAssessment.objects.get(change=c)
    assert first.trigger == "submitted" and 0 <= first.score <= 100
    event = AuditEvent.objects.get(action="change.risk_assessed", object_id=str(c.pk))
    assert event.after["score"] == first.score
    assert event.after["factors"] == first.factors
    services.gate_approve(actor=demo.techlead, change=c, role="tech_lead")
    services.gate_reject(actor=demo.qa, change=c, role="qa", comment="Fails on Safari.")
    triggers = list(RiskAssessment.objects.filter(change=c).order_by("id")
                    .values_list("trigger", flat=True))
    assert triggers == ["submitted", "decision", "decision"]
    assert AuditEvent.objects.filter(action="change.risk_assessed",
                                     object_id=str(c.pk)).count() == 3


def test_an_edit_of_a_submitted_change_is_assessed_again(demo):
    c = request_change(demo.engineer, environment="staging", strategy="canary")
    services.change_request_update(actor=demo.engineer, change=c, strategy="all_at_once")
    latest = RiskAssessment.objects.filter(change=c).first()
    assert latest.trigger == "edited"
    assert next(f for f in latest.factors if f["name"] == "exposure")["value"] == 100


def test_a_draft_is_not_assessed_until_it_is_submitted(demo):
    c = request_change(demo.engineer, environment="staging", draft=True)
    assert not RiskAssessment.objects.filter(change=c).exists()
    services.change_request_submit(actor=demo.engineer, change=c)
    assert RiskAssessment.objects.get(change=c).trigger == "submitted"


# The policy's threshold ------------------------------------------------------------------

def _hotfix_policy(threshold):
    policy = ApprovalPolicy.objects.get(environment__slug="production", change_type="hotfix")
    policy.risk_threshold = threshold
    policy.risk_extra_gate = GateRole.SECURITY
    policy.save()
    return policy


def _hotfix(demo, **kw):
    return request_change(demo.engineer, environment="production", change_type="hotfix",
                          rollback_plan="Redeploy 2.0.0.", **kw)


def test_a_score_at_the_threshold_adds_the_extra_gate_and_says_why(demo, client):
    _hotfix_policy(40)
    c = _hotfix(demo, strategy="all_at_once")
    score = RiskAssessment.objects.get(change=c).score
    assert score >= 40
    assert sorted(c.gates.values_list("role", flat=True)) == ["cab", "security", "tech_lead"]
    assert c.status == ChangeRequest.Status.PENDING_APPROVAL
    event = AuditEvent.objects.get(action="change.risk_gate_added", object_id=str(c.pk))
    assert event.after == {"role": "security", "score": score, "threshold": 40}
    assert event.reason == f"risk {score} ≥ 40: Security gate added"
    client.force_login(demo.cab)
    page = client.get(f"/changes/{c.pk}/").content.decode()
    assert f"Risk {score} ≥ 40: Security gate added" in page


def test_a_score_below_the_threshold_adds_no_gate(demo):
    _hotfix_policy(40)
    c = _hotfix(demo, strategy="canary")
    assert RiskAssessment.objects.get(change=c).score < 40
    assert sorted(c.gates.values_list("role", flat=True)) == ["cab", "tech_lead"]
    assert not AuditEvent.objects.filter(action="change.risk_gate_added").exists()


def test_no_threshold_adds_no_gate(demo):
    c = _hotfix(demo, strategy="all_at_once")
    assert sorted(c.gates.values_list("role", flat=True)) == ["cab", "tech_lead"]


def test_a_gate_the_change_already_has_is_not_added_twice(demo):
    policy = _hotfix_policy(1)
    policy.risk_extra_gate = GateRole.CAB
    policy.save()
    c = _hotfix(demo, strategy="all_at_once")
    assert sorted(c.gates.values_list("role", flat=True)) == ["cab", "tech_lead"]


def test_the_threshold_and_the_extra_gate_come_from_a_policy_version(demo):
    # Set in the policy document (docs/policies.md), compiled into the policy row once
    # the version is approved; the admin only shows them.
    data = yaml.safe_load(services.active_version().document)
    data["environments"]["production"]["change_types"]["hotfix"].update(
        risk_threshold=55, risk_extra_gate="security")
    version = services.policy_propose(actor=demo.techlead, text=policy_rows.dump(data))
    for role in version.gates:
        services.policy_decide(actor=getattr(demo, role), version=version, role=role,
                               decision="approved")
    policy = ApprovalPolicy.objects.get(environment__slug="production", change_type="hotfix")
    assert (policy.risk_threshold, policy.risk_extra_gate) == (55, "security")


# API and pages --------------------------------------------------------------------------

def test_the_api_gives_the_assessment_on_list_and_detail_beside_the_requesters_risk(demo, api):
    c = request_change(demo.engineer, environment="staging", risk="low")
    draft = request_change(demo.engineer, environment="staging", draft=True)
    client = api(demo.engineer)
    detail = client.get(f"/api/v1/changes/{c.pk}/").json()
    assert detail["risk"] == "low"
    stored = RiskAssessment.objects.get(change=c)
    assessment = detail["risk_assessment"]
    assert assessment["score"] == stored.score and assessment["trigger"] == "submitted"
    assert assessment["factors"] == stored.factors and assessment["assessed_at"]
    rows = {row["id"]: row for row in client.get("/api/v1/changes/").json()["results"]}
    assert rows[c.pk]["risk_assessment"] == assessment
    assert rows[draft.pk]["risk_assessment"] is None


def test_the_change_list_api_costs_the_same_queries_with_more_assessed_changes(demo, api):
    client = api(demo.engineer)
    for _ in range(2):
        c = request_change(demo.engineer, environment="staging")
        services.gate_approve(actor=demo.techlead, change=c, role="tech_lead")
    client.get("/api/v1/changes/")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/v1/changes/").status_code == 200
    for _ in range(4):
        c = request_change(demo.engineer, environment="staging")
        services.gate_approve(actor=demo.techlead, change=c, role="tech_lead")
    with CaptureQueriesContext(connection) as more:
        body = client.get("/api/v1/changes/").json()
    assert sum(1 for row in body["results"] if row["risk_assessment"]) == 6
    assert len(more.captured_queries) == len(few.captured_queries)


def test_the_schema_describes_the_assessment(demo, client):
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    field = schema["ChangeOut"]["properties"]["risk_assessment"]
    assert field.get("nullable") or any(
        "null" in str(option) for option in field.get("oneOf", field.get("allOf", [])))
    out = schema["RiskAssessmentOut"]["properties"]
    assert set(out) == {"score", "factors", "assessed_at", "trigger"}
    assert set(schema["RiskFactorOut"]["properties"]) == {
        "name", "label", "value", "weight", "points", "explanation"}


def test_the_change_page_shows_the_score_and_its_factors(demo, client):
    c = request_change(demo.engineer, environment="staging", strategy="all_at_once")
    score = RiskAssessment.objects.get(change=c).score
    client.force_login(demo.techlead)
    page = client.get(f"/changes/{c.pk}/").content.decode()
    assert "Risk score" in page and f"risk {score}" in page
    for label in risk.LABELS.values():
        assert label in page
    assert "all at once: 1 of 1 targets together" in page


def test_the_inbox_shows_each_changes_score(demo, client):
    c = request_change(demo.engineer, environment="staging")
    score = RiskAssessment.objects.get(change=c).score
    client.force_login(demo.techlead)
    page = client.get("/approvals/").content.decode()
    assert f"risk {score}</span>" in page


def test_the_failure_counts_are_the_dora_change_failure_rate_of_the_metrics_page(demo):
    from deployments import selectors as deployment_selectors
    from reporting.metrics import dora

    app = Application.objects.get(slug="storefront")
    for slug, status, days in (("production", "succeeded", 3), ("production", "failed", 5),
                               ("staging", "rolled_back", 10), ("staging", "succeeded", 20),
                               ("production", "cancelled", 2), ("staging", "failed", 100)):
        _ended(app, Environment.objects.get(slug=slug), status, days)
    _ended(app, Environment.objects.get(slug="staging"), "succeeded", 4, kind="rollback")
    until = clock.now()
    since = until - timedelta(days=risk.FAILURE_DAYS)
    figures = dora(Deployment.objects.filter(application=app), since=since, until=until,
                   period="month")["totals"]
    counted = deployment_selectors.change_failure_counts({app.pk}, since=since, until=until)
    assert counted[app.pk] == (figures["deployments"], figures["failed"]) == (4, 2)
