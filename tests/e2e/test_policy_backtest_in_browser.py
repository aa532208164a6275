"""The backtest page in the browser: an auditor pastes a stricter document, runs it over
six months and sees the counts per environment and the changes it would have treated
otherwise, each linking to its change; evaluate mode's differences below."""

from datetime import timedelta

import pytest
import yaml
from playwright.sync_api import expect

from approvals import services
from approvals.models import ChangeRequest, PolicyVersion, RiskAssessment
from catalog.models import Environment
from core import clock
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)

RULES = [{"name": "two-cab-above-70",
          "when": 'change.environment == "production" && change.risk_score > 70',
          "gates": {"cab": 2}}]


FRIDAY_AFTERNOON = {"name": "no-friday-afternoon-production",
                    "when": 'change.environment == "production" && local.weekday == "friday" '
                            "&& local.hour >= 12",
                    "reason": "nobody is around to watch it over the weekend"}


def past_production_change(demo, *, days: float, score: int, started: bool):
    production = Environment.objects.get(slug="production")
    release = ReleaseFactory()
    at = clock.now() - timedelta(days=days)
    change = ChangeRequest.objects.create(
        release=release, environment=production, requested_by=demo.engineer,
        status="deployed" if started else "pending_approval", submitted_at=at, created_at=at,
        rollback_plan="Redeploy the last release.", on_call=demo.oncall)
    RiskAssessment.objects.create(change=change, score=score, trigger="submitted",
                                  created_at=at)
    if started:
        Deployment.objects.create(application=release.application, environment=production,
                                  release=release, change_id=change.pk, status="succeeded",
                                  started_by=demo.oncall, started_at=at + timedelta(days=1),
                                  holds_target=False)
    return change


def test_an_auditor_backtests_a_stricter_document(demo_live, live_server, page, login,
                                                  screenshot):
    risky = [past_production_change(demo_live, days=d, score=s, started=st)
             for d, s, st in ((12, 85, True), (40, 91, False), (70, 72, True))]
    now = clock.now()
    friday = (now - timedelta(days=(now.weekday() - 4) % 7 + 7)).replace(
        hour=14, minute=0, second=0, microsecond=0)
    # Started a day after its submission: a Friday afternoon.
    late = past_production_change(demo_live, days=(now - friday).total_seconds() / 86400 + 1,
                                  score=30, started=True)
    data = yaml.safe_load(PolicyVersion.objects.get(status="active").document)
    data.pop("examples", None)
    data["rules"] = RULES
    data["start_restrictions"] = [FRIDAY_AFTERNOON]
    text = yaml.safe_dump(data, sort_keys=False)
    # The same document proposed: it runs beside the active one on a live submission.
    services.policy_propose(actor=demo_live.techlead, text=yaml.safe_dump(
        {**data, "rules": [{"name": "staging-security", "when": 'change.environment == '
                            '"staging"', "gates": {"security": 1}}]}, sort_keys=False))
    live = request_change(demo_live.engineer, "staging")

    login("auditor")
    page.goto(f"{live_server.url}/policies/")
    page.get_by_role("link", name="Backtest a document over past changes").click()
    expect(page.get_by_role("heading", name="Backtest a policy document")).to_be_visible()
    page.get_by_label("Paste the YAML").fill(text)
    page.get_by_label("Months back").fill("6")
    page.get_by_role("button", name="Run the backtest").click()
    report = page.locator("[data-backtest-report]")
    expect(report.locator('[data-count="differing"]')).to_have_text("4")
    expect(report.locator('tr[data-environment="production"]')).to_contain_text("4")
    rows = page.locator("table[data-backtest-differences] tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator(f'tr[data-change="{late.pk}"]')).to_contain_text(
        "nobody is around to watch it over the weekend")
    for change in risky:
        expect(rows.filter(has=page.get_by_role("link", name=change.reference,
                                                 exact=True))).to_contain_text("cab 2")
    expect(page.locator(f'tr[data-shadow] a[href="/changes/{live.pk}/"]')).to_be_visible()
    screenshot("policy-backtest")
    page.get_by_role("link", name=risky[0].reference, exact=True).click()
    expect(page).to_have_url(f"{live_server.url}/changes/{risky[0].pk}/")
