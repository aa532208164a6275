"""Backtest: a proposed policy replayed over the changes of the last months, beside the
version in force then. The expected differences are worked out here in plain Python
from the history the test makes (environments, risk scores, start times), never by the
evaluator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import ChangeRequest, PolicyVersion, RiskAssessment
from approvals.policy.document import PolicyInvalid
from approvals.policy_backtest import backtest, months_before
from catalog.models import Application, Environment
from core import clock
from deployments.models import Deployment
from tests.factories import ReleaseFactory

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

ACTIVE = """\
policy: 1
timezone: Europe/Berlin
environments:
  staging:
    deploy: [engineers, on-call]
    change_types:
      standard: {gates: {tech_lead: 1, qa: 1}}
  production:
    deploy: [on-call]
    change_types:
      standard: {gates: {cab: 1, security: 1}}
"""
# Two CAB approvals above risk 70 in Production; no Production start on Friday
# afternoons (Berlin time).
PROPOSED = ACTIVE + """\
rules:
  - name: big-risk
    when: change.environment == "production" && change.risk_score >= 70
    gates: {cab: 2}
start_restrictions:
  - name: friday-afternoon
    when: >-
      change.environment == "production" && local.weekday == "friday" && local.hour >= 12
    reason: nobody is around on Friday afternoons
"""


def make_active(text: str, *, since: datetime) -> PolicyVersion:
    """``text`` as the version in force since ``since`` (the seeded first version was
    in force before it)."""
    first = PolicyVersion.objects.get(status=PolicyVersion.Status.ACTIVE)
    PolicyVersion.objects.filter(pk=first.pk).update(
        status=PolicyVersion.Status.SUPERSEDED, activated_at=since - timedelta(days=900),
        closed_at=since)
    from approvals.policy.document import parse

    return PolicyVersion.objects.create(
        number=first.number + 1, document=text, digest=parse(text).digest,
        status=PolicyVersion.Status.ACTIVE, activated_at=since, effective_at=since)


# (environment, risk score or None, submitted: days before NOW, started: a local Berlin
# time or None). Fridays in the period: 2026-11-27, 2026-11-20, 2026-10-30 ...
HISTORY = [
    ("production", 85, 10, datetime(2026, 11, 27, 13, 0)),   # big risk, Friday 13:00
    ("production", 70, 20, datetime(2026, 11, 19, 21, 0)),   # big risk (at the threshold)
    ("production", 69, 30, datetime(2026, 11, 20, 11, 30)),  # Friday morning
    ("production", None, 40, datetime(2026, 10, 30, 16, 0)),  # Friday afternoon, unscored
    ("production", 40, 50, None),                             # never started
    ("production", 90, 60, None),                             # big risk, never started
    ("staging", 95, 15, datetime(2026, 11, 27, 15, 0)),       # staging: neither rule
    ("staging", None, 25, datetime(2026, 11, 20, 14, 0)),
    ("production", 75, 250, datetime(2026, 3, 20, 14, 0)),   # before the six months
]


@pytest.fixture
def history(demo):
    make_active(ACTIVE, since=NOW - timedelta(days=400))
    apps = {"production": Application.objects.get(slug="storefront"),
            "staging": Application.objects.get(slug="storefront")}
    made = []
    for env_slug, score, days, started in HISTORY:
        env = Environment.objects.get(slug=env_slug)
        release = ReleaseFactory(application=apps[env_slug])
        submitted = NOW - timedelta(days=days)
        change = ChangeRequest.objects.create(
            release=release, environment=env, requested_by=demo.engineer,
            status="deployed" if started else "pending_approval", submitted_at=submitted,
            created_at=submitted, rollback_plan="Redeploy the last release.",
            on_call=demo.oncall)
        if score is not None:
            RiskAssessment.objects.create(change=change, score=score, trigger="submitted",
                                          created_at=submitted)
            # A later assessment is not what the submission saw.
            RiskAssessment.objects.create(change=change, score=5, trigger="decision",
                                          created_at=submitted + timedelta(hours=1))
        start_utc = started.replace(tzinfo=BERLIN).astimezone(UTC) if started else None
        if started:
            Deployment.objects.create(
                application=release.application, environment=env, release=release,
                change_id=change.pk, status="succeeded", started_by=demo.oncall,
                started_at=start_utc, finished_at=start_utc + timedelta(minutes=5),
                holds_target=False)
        made.append({"id": change.pk, "environment": env_slug, "score": score,
                     "submitted": submitted, "started": start_utc})
    return made


def expected(history):
    """What the proposed rules would have changed over the six months before NOW, by
    plain reading of the history."""
    since = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    gates, refused = set(), set()
    for change in history:
        if change["submitted"] < since:
            continue
        production = change["environment"] == "production"
        if production and change["score"] is not None and change["score"] >= 70:
            gates.add(change["id"])
        if production and change["started"]:
            local = change["started"].astimezone(BERLIN)
            if local.weekday() == 4 and local.hour >= 12:
                refused.add(change["id"])
    return gates, refused


def test_months_before_counts_calendar_months():
    assert months_before(datetime(2026, 8, 31, 12, tzinfo=UTC), 6) == datetime(
        2026, 2, 28, 12, tzinfo=UTC)
    assert months_before(datetime(2026, 12, 1, tzinfo=UTC), 12) == datetime(
        2025, 12, 1, tzinfo=UTC)


def test_a_stricter_policy_names_the_changes_it_would_have_affected(history):
    gates, refused = expected(history)
    report = backtest(PROPOSED, months=6, now=NOW)
    by_change = {d["change"]: d for d in report["differences"]}
    assert set(by_change) == gates | refused
    assert {c for c, d in by_change.items() if "gates" in d} == gates
    for change_id in gates:
        assert by_change[change_id]["gates"]["active"] == {"cab": 1, "security": 1}
        assert by_change[change_id]["gates"]["proposed"] == {"cab": 2, "security": 1}
        assert by_change[change_id]["gates"]["rules"] == ["big-risk"]
    assert {c for c, d in by_change.items() if "start" in d} == refused
    for change_id in refused:
        difference = by_change[change_id]
        assert difference["start"]["active"] is True
        assert difference["start"]["proposed"] is False
        assert [b["code"] for b in difference["blockers"]["added"]] == ["start_restricted"]
        # The earliest start it allows: the following midnight in Berlin.
        started = next(c["started"] for c in history if c["id"] == change_id)
        midnight = (started.astimezone(BERLIN) + timedelta(days=1)).replace(hour=0, minute=0)
        assert difference["start"]["earliest"] == midnight.astimezone(UTC).isoformat()
        assert difference["version_basis"] == "in_force"
    counts = report["counts"]
    assert counts["changes"] == 8
    assert counts["by_environment"]["production"]["gates"] == len(gates)
    assert counts["by_environment"]["production"]["start_refused"] == len(refused)
    assert counts["by_environment"]["staging"]["differing"] == 0
    assert counts["differing"] == len(gates | refused)


def test_the_active_document_replayed_over_itself_differs_nowhere(history):
    report = backtest(ACTIVE, months=6, now=NOW)
    assert report["differences"] == []
    assert report["counts"]["differing"] == 0
    assert report["counts"]["changes"] == 8


def test_a_looser_policy_lets_through_starts_the_active_one_refused(history):
    report = backtest(PROPOSED, months=6, now=NOW)
    refused = {d["change"] for d in report["differences"] if "start" in d}
    # Make the stricter one the version in force, then backtest the looser one.
    version = PolicyVersion.objects.get(status=PolicyVersion.Status.ACTIVE)
    from approvals.policy.document import parse

    PolicyVersion.objects.filter(pk=version.pk).update(document=PROPOSED,
                                                       digest=parse(PROPOSED).digest)
    looser = backtest(ACTIVE, months=6, now=NOW)
    allowed = {d["change"] for d in looser["differences"]
               if d.get("start", {}).get("proposed") is True}
    assert allowed == refused
    assert looser["counts"]["start_allowed"] == len(refused)


def test_facts_are_read_in_a_constant_number_of_queries(history, demo):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            backtest(PROPOSED, months=6, now=NOW)
        return len(ctx.captured_queries)

    few = queries()
    env = Environment.objects.get(slug="production")
    for days in range(1, 30):
        release = ReleaseFactory()
        change = ChangeRequest.objects.create(
            release=release, environment=env, requested_by=demo.techlead,
            status="deployed", submitted_at=NOW - timedelta(days=days, hours=3))
        RiskAssessment.objects.create(change=change, score=days * 3, trigger="submitted")
        Deployment.objects.create(application=release.application, environment=env,
                                  release=release, change_id=change.pk, status="succeeded",
                                  started_by=demo.oncall, holds_target=False,
                                  started_at=NOW - timedelta(days=days))
    assert queries() == few


def test_the_submission_event_names_the_version_that_was_in_force(demo):
    """A change submitted through the services: its audited facts and digest are what
    the backtest replays."""
    from tests.factories import request_change

    with clock.use(lambda: NOW - timedelta(days=3)):
        change = request_change(demo.engineer, "production", change_type="standard",
                                rollback_plan="Redeploy.", on_call=demo.oncall)
    report = backtest(PROPOSED.replace("production:\n    deploy",
                                       "production:\n    deploy", 1), months=1, now=NOW)
    assert report["counts"]["changes"] == 1
    [difference] = [d for d in report["differences"] if d["change"] == change.pk] or [None]
    # The demo's first version asks Production's standard changes for business too;
    # ACTIVE-based PROPOSED does not, so the gates differ, measured against v1.
    assert difference["version_basis"] == "recorded"
    assert difference["active_version"] == 1
    assert difference["gates"]["active"] == {"business": 1, "cab": 1, "security": 1}


def test_an_invalid_document_is_refused_with_the_path_of_its_error(history):
    with pytest.raises(PolicyInvalid) as caught:
        backtest("policy: 1\nenvironments:\n  production:\n    deploy: oncall\n", months=6,
                 now=NOW)
    assert caught.value.problems[0].startswith("document.environments.production.deploy")


def test_the_api_answers_differences_and_counts(history, api):
    with clock.use(lambda: NOW):
        answer = api(_user("auditor")).post("/api/v1/policies/backtest",
                                            {"document": PROPOSED, "months": 6},
                                            format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    gates, refused = expected(history)
    assert {d["change"] for d in body["differences"]} == gates | refused
    assert body["counts"]["differing"] == len(gates | refused)
    assert body["counts"]["by_environment"]["production"]["changes"] == 6
    assert set(body["differences"][0]) >= {"change", "reference", "environment", "kinds",
                                           "active_version", "version_basis", "errors"}


def _user(name):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=name)


@pytest.mark.parametrize("who, status", [("auditor", 200), ("cab", 200), ("security", 200),
                                         ("techlead", 200), ("engineer", 403), ("qa", 403)])
def test_who_may_backtest(demo, api, who, status):
    answer = api(_user(who)).post("/api/v1/policies/backtest", {"document": ACTIVE},
                                  format="json")
    assert answer.status_code == status, answer.content
    if status == 403:
        assert answer.json()["code"] == "not_permitted"


@pytest.mark.parametrize("body, code, field_text", [
    ({"document": "policy: 1\nenvironments:\n  production:\n    deploy: oncall\n"},
     PolicyInvalid.code, "document.environments.production.deploy"),
    ({"document": "policy: 1\nrules:\n  - {name: x, when: 'change.risk_score >', "
                  "gates: {cab: 1}}\nenvironments: {}\n"},
     PolicyInvalid.code, "document.rules[0].when"),
    ({"document": ACTIVE, "months": 25}, "invalid", "months"),
    ({"document": ACTIVE, "months": 0}, "invalid", "months"),
])
def test_bad_input_is_refused_with_a_code_and_where(demo, api, body, code, field_text):
    answer = api(_user("auditor")).post("/api/v1/policies/backtest", body, format="json")
    assert answer.status_code == 400, answer.content
    error = answer.json()
    assert error["code"] == code
    assert field_text in str(error["fields"])


def test_the_page_lists_counts_per_environment_and_links_each_change(history, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(_user("cab"))
    with clock.use(lambda: NOW):
        page = client.post("/policies/backtest/", {
            "document": "", "months": "6",
            "file": SimpleUploadedFile("proposed.yaml", PROPOSED.encode())})
    assert page.status_code == 200
    body = page.content.decode()
    gates, refused = expected(history)
    for change_id in gates | refused:
        assert f'href="/changes/{change_id}/"' in body
    assert 'data-environment="production"' in body
    assert f'data-count="differing">{len(gates | refused)}<' in body


def test_the_page_shows_where_a_document_is_wrong(demo, client):
    client.force_login(_user("auditor"))
    page = client.post("/policies/backtest/", {"document": "policy: 2\nenvironments: {}\n",
                                               "months": "6"})
    assert page.status_code == 400
    assert "document.policy" in page.content.decode()


def test_the_replayer_answers_as_the_evaluator_does_on_varied_facts():
    """Kept outcomes are keyed by what the evaluator reads: on facts that vary in
    everything it reads, the kept answer is the evaluator's."""
    import itertools

    from approvals.policy.document import parse
    from approvals.policy.evaluate import evaluate
    from approvals.policy_backtest import Replayer

    text = PROPOSED.replace("standard: {gates: {cab: 1, security: 1}}", (
        "standard: {gates: {cab: 1, security: 1}, requires_window: true, "
        "risk_threshold: 50, risk_extra_gate: business, conflicts_block: true, "
        "requires_on_call: true}\n    windows:\n"
        "      - {weekday: tuesday, start: \"20:00\", end: \"23:00\"}\n    freezes:\n"
        "      - {starts_at: \"2026-11-02T00:00:00Z\", ends_at: \"2026-11-04T00:00:00Z\", "
        "reason: migration}")) + """\
  - name: payments-by-engineers
    when: >-
      "payments" in change.applications && "engineers" in change.requester_groups
      && change.requester != actor.username && change.no_such_fact == 1
    reason: a broken condition reports its error
"""
    document = parse(text)
    replayer = Replayer(document)
    moments = [datetime(2026, 11, d, h, m, tzinfo=UTC)
               for d, h, m in ((3, 10, 0), (6, 13, 30), (6, 11, 0), (10, 19, 30), (10, 21, 5))]
    combos = itertools.product(
        ("production", "staging", "development"), (None, 30, 50, 85),
        (["payments"], ["storefront"]), ([], ["same_application"]), (True, False),
        (None, {"username": "oncall", "groups": ["on-call"]},
         {"username": "engineer", "groups": ["engineers"]}),
        ("submit", "start"), moments)
    checked = 0
    for env, score, apps, conflicts, on_call, actor, action, at in combos:
        facts = {"action": action, "change": {
            "id": checked, "environment": env, "change_type": "standard",
            "applications": apps, "risk_score": score, "requester": "engineer",
            "requester_groups": ["engineers"], "on_call": on_call, "conflicts": conflicts}}
        if actor:
            facts["actor"] = actor
        direct = evaluate(document, {**facts, "at": at.isoformat()})
        assert replayer.evaluate(facts, at) == direct, (facts, at)
        checked += 1
    assert checked == 2880
    assert replayer.evaluations < checked


def test_conflicts_are_those_of_the_start_hour_as_conflict_detection_finds_them(demo):
    from approvals import conflicts as conflict_rules
    from approvals.policy_history import past_changes

    production = Environment.objects.get(slug="production")
    storefront = Application.objects.get(slug="storefront")
    starts = [NOW - timedelta(days=2), NOW - timedelta(days=2) + timedelta(minutes=30),
              NOW - timedelta(days=1)]
    made = []
    for start in starts:
        release = ReleaseFactory(application=storefront)
        change = ChangeRequest.objects.create(
            release=release, environment=production, requested_by=demo.engineer,
            status="deployed", submitted_at=start - timedelta(hours=5), on_call=demo.oncall)
        Deployment.objects.create(application=storefront, environment=production,
                                  release=release, change_id=change.pk, status="succeeded",
                                  started_by=demo.oncall, started_at=start,
                                  holds_target=False)
        made.append(change.pk)
    by_id = {p.id: p for p in past_changes(NOW - timedelta(days=30), NOW)}
    # The two starts half an hour apart share the application and the on-call engineer.
    assert by_id[made[0]].start["change"]["conflicts"] == ["on_call", "same_application"]
    assert by_id[made[1]].start["change"]["conflicts"] == ["on_call", "same_application"]
    assert by_id[made[2]].start["change"]["conflicts"] == []
    # As the conflict rules themselves find them for those windows.
    facts = [conflict_rules.Facts(
        id=pk, change_type="standard", application_id=storefront.pk,
        application="storefront", environment_id=production.pk, environment="production",
        on_call_id=demo.oncall.pk, on_call="oncall",
        window=conflict_rules.Window(s, s + conflict_rules.EXPECTED_DURATION, "scheduled"))
        for pk, s in zip(made, starts, strict=True)]
    world = conflict_rules.World(changes=facts)
    assert sorted({c.kind for c in conflict_rules.detect(facts[0], world)}) == [
        "on_call", "same_application"]
