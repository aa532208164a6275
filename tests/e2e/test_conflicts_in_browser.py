"""CAB sees the conflicts of a change in the browser: on its page, with a link to the
other change, and as a marker on the inbox card."""

from datetime import timedelta

import pytest
from playwright.sync_api import expect

from approvals.models import Freeze
from catalog.models import Application, Environment, Target
from core import clock
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_conflicts_of_a_change_are_on_its_page_and_in_the_inbox(
        demo_live, live_server, page, login, screenshot):
    at = (clock.now() + timedelta(days=1)).replace(hour=10, minute=0, second=0,
                                                   microsecond=0)
    staging = Environment.objects.get(slug="staging")
    storefront = Application.objects.get(slug="storefront")
    payments = Application.objects.create(slug="payments", name="Payments")
    Target.objects.create(application=payments, environment=staging, name="node-1",
                          address="127.0.0.1")
    storefront.depends_on.add(payments)
    Freeze.objects.create(environment=staging, starts_at=at - timedelta(hours=2),
                          ends_at=at + timedelta(minutes=30), reason="Launch week")
    engineer, oncall = demo_live.engineer, demo_live.oncall
    mine = request_change(engineer, "staging", release=ReleaseFactory(),
                          scheduled_for=at, on_call=oncall)
    other = request_change(engineer, "staging", release=ReleaseFactory(),
                           scheduled_for=at + timedelta(minutes=30))
    request_change(engineer, "staging", release=ReleaseFactory(application=payments),
                   scheduled_for=at + timedelta(minutes=15), on_call=oncall)

    login("techlead")
    page.goto(f"{live_server.url}/changes/{mine.pk}/")
    section = page.locator("section#conflicts")
    expect(section.get_by_role("heading", name="Conflicts")).to_be_visible()
    expect(section.locator("li")).to_have_count(5)
    expect(section.locator("li[data-kind=freeze]")).to_contain_text("Launch week")
    screenshot("change-conflicts")

    section.get_by_role("link", name=other.reference).click()
    expect(page).to_have_url(f"{live_server.url}/changes/{other.pk}/")
    expect(page.locator("section#conflicts")).to_contain_text(mine.reference)

    page.goto(f"{live_server.url}/approvals/")
    marker = page.locator(f"#gate-{mine.gates.get(role='tech_lead').pk} .badge-conflict")
    expect(marker).to_have_text("5 conflicts")
    reasons = marker.get_attribute("title").split("\n")
    assert len(reasons) == 5
    assert reasons[0].startswith(f"{other.reference} deploys storefront to staging in an "
                                 "overlapping window (")
    screenshot("inbox-conflicts")
