"""The risk score in the browser: the change page's badge and factors, the inbox's score."""

from datetime import timedelta

import pytest
from playwright.sync_api import expect

from approvals.models import ApprovalPolicy, RiskAssessment
from catalog.models import Application, Environment
from core import clock
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_cab_sees_a_high_risk_change_its_factors_and_why_a_gate_was_added(
        demo_live, live_server, page, login, screenshot):
    policy = ApprovalPolicy.objects.get(environment__slug="production", change_type="hotfix")
    policy.risk_threshold, policy.risk_extra_gate = 60, "security"
    policy.save()
    app = Application.objects.get(slug="storefront")
    production = Environment.objects.get(slug="production")
    for status in ("failed", "rolled_back", "succeeded"):
        at = clock.now() - timedelta(days=3)
        Deployment.objects.create(application=app, environment=production, status=status,
                                  release=ReleaseFactory(), created_at=at, finished_at=at)
    release = ReleaseFactory(migration_plan=[{"name": "0042_drop_legacy_orders",
                                              "kind": "irreversible"}])
    change = request_change(demo_live.engineer, "production", release=release,
                            change_type="hotfix", strategy="all_at_once",
                            rollback_plan="Restore the backup and redeploy 2.0.0.")
    score = RiskAssessment.objects.get(change=change).score
    assert score >= 60

    login("cab")
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    card = page.locator("section#risk")
    expect(card.get_by_role("heading", name="Risk score")).to_contain_text(f"{score} · high")
    expect(card).to_contain_text(f"Risk {score} ≥ 60: Security gate added")
    expect(card.locator("table.risk-factors tbody tr")).to_have_count(8)
    expect(card).to_contain_text("irreversible: 0042_drop_legacy_orders")
    expect(page.locator("#gate-security")).to_be_visible()
    card.scroll_into_view_if_needed()
    screenshot("change-page-risk")

    page.goto(f"{live_server.url}/approvals/")
    item = page.locator("li.inbox-item").filter(
        has=page.get_by_role("link", name=change.reference, exact=True))
    expect(item.locator(".badge-risk-high")).to_have_text(f"risk {score}")
    screenshot("approvals-inbox-risk")
