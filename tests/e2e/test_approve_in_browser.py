"""Deciding gates in the browser: the approvals inbox and the change page."""

import pytest
from playwright.sync_api import expect

from approvals.models import ChangeRequest, Gate
from audit.models import AuditEvent
from tests.factories import request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_tech_lead_approves_a_staging_change_from_the_inbox(demo_live, live_server, page,
                                                              login, screenshot):
    change = request_change(demo_live.engineer, "staging",
                            rollback_plan="Redeploy the previous version.")
    others = [request_change(demo_live.engineer, "staging"),
              request_change(demo_live.engineer, "staging", change_type="hotfix")]

    login("techlead")
    page.goto(f"{live_server.url}/approvals/")
    cards = page.locator("li.inbox-item")
    expect(cards).to_have_count(3)
    screenshot("approvals-inbox-techlead")

    card = cards.filter(has=page.get_by_role("link", name=change.reference, exact=True))
    card.get_by_label("Comment").fill("Looks good to me")
    card.get_by_role("button", name="Approve").click()

    # The form posts through HTMX and the answer replaces the card's content in place.
    expect(card.get_by_role("status")).to_contain_text("Tech lead gate: Approved")
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    assert page.url == f"{live_server.url}/approvals/"
    for other in others:
        expect(page.get_by_role("link", name=other.reference, exact=True)).to_be_visible()
    screenshot("approvals-inbox-after-approve")

    gate = Gate.objects.get(change=change, role="tech_lead")
    assert gate.status == Gate.Status.APPROVED
    approval = gate.approvals.get()
    assert (approval.approver.username, approval.comment) == ("techlead", "Looks good to me")
    event = AuditEvent.objects.get(action="gate.approved", object_id=str(change.pk))
    assert event.actor_name == "techlead"
    assert Gate.objects.get(change=change, role="qa").status == Gate.Status.PENDING
    assert not Gate.objects.filter(change__in=others).exclude(status="pending").exists()


def test_requester_gets_no_approve_button_and_qa_sees_only_the_qa_gate(demo_live, live_server,
                                                                         page, login, screenshot):
    change = request_change(demo_live.engineer, "staging",
                            rollback_plan="Switch `current` back to the previous release.")

    login("engineer")
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text(change.reference)
    expect(page.locator("#gate-tech_lead")).to_contain_text("Pending")
    expect(page.locator("#gate-qa")).to_contain_text("Pending")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    screenshot("change-page-requester")

    page.goto(f"{live_server.url}/approvals/")
    expect(page.locator("li.inbox-item")).to_have_count(0)
    expect(page.get_by_text("Nothing waits for your decision")).to_be_visible()

    page.context.clear_cookies()
    login("qa")
    page.goto(f"{live_server.url}/approvals/")
    cards = page.locator("li.inbox-item")
    expect(cards).to_have_count(1)
    expect(cards).to_contain_text(change.reference)
    expect(cards.locator(".your-gate")).to_contain_text("Your gate: QA")
    # The tech lead gate is not qa's to decide; the card only says the change waits for it.
    expect(cards.get_by_role("button", name="Approve")).to_have_count(1)
    expect(cards.locator(".also-waiting")).to_contain_text("Tech lead approval pending")
    screenshot("approvals-inbox-qa")


def test_rejecting_without_a_comment_shows_the_error_and_changes_nothing(demo_live, live_server,
                                                                          page, login,
                                                                          screenshot):
    change = request_change(demo_live.engineer, "staging")

    login("techlead")
    page.goto(f"{live_server.url}/approvals/")
    card = page.locator("li.inbox-item")
    expect(card).to_have_count(1)
    card.get_by_role("button", name="Reject").click()

    expect(card.get_by_role("alert")).to_contain_text("A rejection needs a comment")
    # The form stays in the card, so the approver can say why and try again.
    expect(card.get_by_label("Comment")).to_be_visible()
    screenshot("approvals-inbox-reject-error")

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert set(change.gates.values_list("status", flat=True)) == {Gate.Status.PENDING}
    assert not change.approvals.exists()
    assert not AuditEvent.objects.filter(action="gate.rejected").exists()

    # Saying why is enough: the same card now records the rejection.
    card.get_by_label("Comment").fill("Checkout test fails on staging.")
    card.get_by_role("button", name="Reject").click()
    expect(card.get_by_role("status")).to_contain_text("Tech lead gate: Rejected")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.REJECTED
    assert AuditEvent.objects.get(action="gate.rejected").actor_name == "techlead"
