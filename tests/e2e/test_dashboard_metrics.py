"""The deployment dashboard updates live, and the metrics page draws its charts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from catalog.models import Application, Environment
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change
from tests.reporting.conftest import make_deployment

pytestmark = pytest.mark.django_db(transaction=True)


def history():
    """Five months of storefront deployments to production, with failures and recoveries."""
    app = Application.objects.get(slug="storefront")
    env = Environment.objects.get(slug="production")
    now = timezone.now()
    n = 0
    for days_ago in range(2, 150, 4):
        n += 1
        finished = now - timedelta(days=days_ago)
        failed = n % 6 == 0
        make_deployment(app, env, version=f"7.{n}.0",
                        committed=finished - timedelta(hours=n % 30 + 2), finished=finished,
                        status="failed" if failed else "succeeded", failed_step=failed)
    return app, env


def test_metrics_page_draws_every_chart_with_bars_and_bands(demo_live, live_server, page,
                                                            login, screenshot):
    history()
    login("auditor")
    page.goto(f"{live_server.url}/metrics/")
    expect(page.get_by_role("heading", name="Deployment metrics")).to_be_visible()
    expect(page.get_by_label("Environment")).to_have_value("production")
    charts = page.locator("svg.chart-svg")
    expect(charts).to_have_count(5)
    for key in ("frequency", "lead-time", "mttr", "failure-rate", "success-rate"):
        chart = page.locator(f'[data-chart="{key}"] svg')
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box["width"] > 300 and box["height"] > 100
    # Bars are really drawn: the deployments chart has visible rectangles of height.
    heights = page.locator('[data-chart="frequency"] rect.seg').evaluate_all(
        "els => els.map(e => e.getBBox().height)")
    assert len(heights) >= 5 and all(h > 0 for h in heights)
    expect(page.locator('[data-chart="failure-rate"] .threshold')).to_have_count(3)
    expect(page.locator('[data-metric="lead_time"] .band')).to_have_text("Elite")
    expect(page.locator('[data-metric="change_failure_rate"] .band')).to_have_text("Low")
    screenshot("metrics")
    page.get_by_label("Environment").select_option("staging")
    page.get_by_role("button", name="Show").click()
    expect(page.locator('[data-metric="deployment_frequency"] .band')).to_have_text("No data")


def test_dashboard_shows_versions_and_updates_live(demo_live, live_server, page, login,
                                                   screenshot):
    app, env = history()
    change = request_change(demo_live.engineer, "production", release=ReleaseFactory(),
                            rollback_plan="Redeploy", on_call=demo_live.oncall)
    login("auditor")
    page.goto(f"{live_server.url}/dashboard/")
    cell = page.locator('tr[data-application="storefront"] td[data-environment="production"]')
    expect(cell.locator(".version")).to_have_text("7.1.0")
    expect(cell.locator(f'[data-change="{change.pk}"]')).to_contain_text("Change approval board")
    expect(cell.locator(f'[data-change="{change.pk}"]')).to_contain_text("cab2")
    screenshot("dashboard")
    # A deployment starts elsewhere; the board shows it without a reload.
    staging = Environment.objects.get(slug="staging")
    running = make_deployment(app, staging, version="8.0.0", committed=timezone.now(),
                              finished=timezone.now(), status="running")
    Deployment.objects.filter(pk=running.pk).update(finished_at=None, progress=55)
    staging_cell = page.locator(
        'tr[data-application="storefront"] td[data-environment="staging"]')
    expect(staging_cell.locator(f'[data-deployment="{running.pk}"]')).to_be_visible(
        timeout=10_000)
    Deployment.objects.filter(pk=running.pk).update(status="succeeded",
                                                    finished_at=timezone.now(), progress=100)
    expect(staging_cell.locator(".version")).to_have_text("8.0.0", timeout=10_000)
    screenshot("dashboard-live")
