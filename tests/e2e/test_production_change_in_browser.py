"""A production standard change through CAB, security and business in Chromium,
then held by the maintenance window with the reason in plain words."""

from datetime import time, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from approvals import services
from approvals.models import ChangeRequest, MaintenanceWindow
from catalog.models import Environment
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_cab_security_and_business_approve_and_the_window_holds_the_change(
        demo_live, live_server, page, login, screenshot):
    production = Environment.objects.get(slug="production")
    # A window three days from now, so that today is certainly outside it.
    MaintenanceWindow.objects.filter(environment=production).delete()
    window_day = (timezone.now() + timedelta(days=3)).weekday()
    MaintenanceWindow.objects.create(environment=production, weekday=window_day,
                                     start_time=time(22, 0), end_time=time(23, 0),
                                     timezone="UTC")
    release = ReleaseFactory()
    Deployment.objects.create(application=release.application, release=release,
                              environment=Environment.objects.get(slug="staging"),
                              status="succeeded", started_by=demo_live.engineer)
    change = request_change(demo_live.engineer, "production", release=release,
                            on_call=demo_live.oncall,
                            rollback_plan="Switch current back to the previous release.")
    for item in change.checklist.filter(auto_check=""):
        services.checklist_item_set(actor=demo_live.engineer, change=change, item_id=item.pk,
                                    done=True, note="checked in staging")

    for approver, gate in (("cab", "Change approval board"), ("security", "Security"),
                           ("business", "Business")):
        page.context.clear_cookies()
        login(approver)
        page.goto(f"{live_server.url}/approvals/")
        card = page.locator("li.inbox-item").filter(
            has=page.get_by_role("link", name=change.reference, exact=True))
        expect(card).to_contain_text(gate)
        if approver == "cab":
            screenshot("inbox-cab-production")
        card.get_by_label("Comment").fill(f"{approver} agrees")
        card.get_by_role("button", name="Approve").click()
        expect(card.get_by_role("status")).to_contain_text(f"{gate} gate: Approved")

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED

    page.context.clear_cookies()
    login("oncall")
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    blockers = page.locator("[data-code=outside_window]")
    expect(blockers).to_contain_text("Outside the maintenance windows of Production")
    expect(blockers).to_contain_text("the next opens")
    expect(page.get_by_role("button", name="Deploy to Production")).to_have_count(0)
    for gate in ("cab", "security", "business"):
        expect(page.locator(f"#gate-{gate}")).to_contain_text("Approved")
    screenshot("change-page-production-held-by-window")


def test_the_user_menu_leads_to_delegations_and_signs_out(demo_live, live_server, page, login):
    login("cab")
    page.goto(f"{live_server.url}/")
    page.locator("details.who summary").click()
    page.get_by_role("link", name="Delegations").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delegations")
    page.locator("details.who summary").click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
