"""An auditor reads the quality of approvals: who rubber-stamps, who trades approvals."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from approvals import services
from core import clock
from tests.factories import request_change

pytestmark = pytest.mark.django_db(transaction=True)


def _history(demo):
    """Eight changes: QA approves each within a minute without opening it; the tech lead
    opens each and takes a quarter of an hour; two tech leads approve each other's."""
    other = get_user_model().objects.create(username="techlead2")
    other.groups.set(demo.techlead.groups.all())
    at = [datetime.now(UTC) - timedelta(days=12)]
    with clock.use(lambda: at[0]):
        for n in range(8):
            requester = (demo.techlead, other, demo.engineer)[n % 3]
            lead = other if requester == demo.techlead else demo.techlead
            change = request_change(requester)
            at[0] += timedelta(seconds=20 + 5 * n)
            services.gate_approve(actor=demo.qa, change=change, role="qa")
            at[0] += timedelta(minutes=4)
            services.change_view_record(change=change, user=lead)
            at[0] += timedelta(minutes=10 + n)
            services.gate_approve(actor=lead, change=change, role="tech_lead")
            at[0] += timedelta(hours=3)


def test_an_auditor_sees_the_rubber_stamp_and_the_reciprocal_pair(demo_live, live_server,
                                                                    page, login, screenshot):
    _history(demo_live)
    login("auditor")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    page.get_by_role("link", name="Approval quality").click()
    expect(page.get_by_role("heading", name="Approval quality")).to_be_visible()

    approvers = page.get_by_role("region", name="Approvers")
    expect(approvers.get_by_role("row", name="qa")).to_contain_text("Rubber stamp?")
    expect(approvers.get_by_role("row", name="techlead2")).not_to_contain_text("Rubber stamp?")
    pairs = page.get_by_role("region", name="People who approve each other's changes")
    expect(pairs.get_by_role("row").nth(1)).to_contain_text("techlead")
    expect(pairs.get_by_role("row").nth(1)).to_contain_text("techlead2")
    gates = page.get_by_role("region", name="Gates")
    expect(gates.get_by_role("row", name="QA")).to_contain_text("1.00")
    expect(page.get_by_role("link", name="Export CSV")).to_be_visible()
    screenshot("approval-quality")
