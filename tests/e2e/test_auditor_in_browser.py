"""An auditor finds a production deployment and reads the evidence behind it."""

import pytest
from playwright.sync_api import expect

from tests.portal.audit_helpers import approved_production_change, make_deployment

pytestmark = pytest.mark.django_db(transaction=True)


def test_auditor_finds_a_deployment_and_opens_its_evidence(demo_live, live_server, page,
                                                           login, screenshot):
    change = approved_production_change(demo_live)
    deployment = make_deployment(change)
    make_deployment(approved_production_change(demo_live), status="failed")

    login("auditor")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    page.get_by_role("link", name="Deployments and evidence").click()

    page.get_by_label("Environment").select_option("production")
    page.get_by_label("Status").select_option("succeeded")
    page.get_by_label("Approver").fill("security")
    page.get_by_role("button", name="Filter").click()
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(2)  # the header and the one deployment that matches
    expect(rows.nth(1)).to_contain_text(change.reference)
    expect(rows.nth(1)).to_contain_text("SOP 13.2 4/7")
    screenshot("auditor-deployments")

    page.get_by_role("link", name=f"Evidence for deployment {deployment.pk}").click()
    expect(page).to_have_url(f"{live_server.url}/auditor/deployments/{deployment.pk}/")
    expect(page.get_by_role("heading", name=f"Evidence for deployment #{deployment.pk}")
           ).to_be_visible()
    approvals = page.get_by_role("region", name="Approvals")
    for approver in ("cab", "security", "business"):
        expect(approvals.get_by_role("cell", name=approver, exact=True)).to_be_visible()
    compliance = page.get_by_role("region", name="SOP 13.2 compliance checklist")
    expect(compliance.get_by_role("row", name="Change approval documented")).to_contain_text(
        "Done")
    expect(compliance.get_by_role("row", name="Stakeholder notification sent")
           ).to_contain_text("Not recorded")
    expect(page.get_by_text("Every event below still matches its hash.")).to_be_visible()
    screenshot("auditor-evidence")


def test_an_engineer_cannot_open_the_evidence_page(demo_live, live_server, page, login):
    deployment = make_deployment(approved_production_change(demo_live))
    login("engineer")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit")
           ).to_have_count(0)
    response = page.goto(f"{live_server.url}/auditor/deployments/{deployment.pk}/")
    assert response.status == 403
