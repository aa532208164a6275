"""A tech lead proposes a policy change in the browser; CAB and security approve it on
its page, which shows the diff; the proposer sees they cannot decide it."""

import pytest
import yaml
from playwright.sync_api import expect

from approvals.models import PolicyVersion

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_policy_change_is_proposed_reviewed_and_approved(demo_live, live_server, page,
                                                           login, screenshot):
    login("techlead")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Policy").click()
    expect(page.get_by_role("heading", name="Policy", exact=True)).to_be_visible()
    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["rules"] = [{"name": "payments-need-security",
                      "when": '"payments" in change.applications', "gates": {"security": 1},
                      "reason": "Payments handle card data."}]
    page.get_by_label("Summary").fill("Payments need a security review")
    page.get_by_label("Document (YAML)").fill(yaml.safe_dump(data, sort_keys=False))
    screenshot("policy-propose")
    page.get_by_role("button", name="Propose").click()
    expect(page).to_have_url(f"{live_server.url}/policies/2/")
    expect(page.get_by_text("You proposed this version: someone else decides it.")
           ).to_be_visible()
    expect(page.locator(".diff-add", has_text="payments-need-security")).to_be_visible()
    screenshot("policy-version-proposed")

    for person, gate in (("cab", "Change approval board"), ("security", "Security")):
        page.context.clear_cookies()
        login(person)
        page.goto(f"{live_server.url}/policies/2/")
        page.get_by_label("Gate", exact=True).select_option(label=gate)
        page.get_by_label("Comment").fill("Reviewed the diff.")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_text(f"{person} approved as")).to_be_visible()
    expect(page.locator("[data-status=active]")).to_be_visible()
    screenshot("policy-version-active")

    page.context.clear_cookies()
    login("auditor")
    page.goto(f"{live_server.url}/auditor/policies/")
    expect(page.get_by_role("link", name="Policy versions")).to_be_visible()
    expect(page.get_by_role("cell", name="cab (cab, approved), security (security, approved)")
           ).to_be_visible()
    screenshot("auditor-policies")
