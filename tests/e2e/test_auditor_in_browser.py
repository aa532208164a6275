"""An auditor finds a production deployment and reads the evidence behind it."""

import pytest
from playwright.sync_api import expect

from tests.audit.audit_helpers import approved_production_change, make_deployment

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


def test_the_audit_trail_fits_the_window_one_line_per_event(demo_live, live_server, page,
                                                             login, screenshot):
    from django.db import transaction

    from audit.trail import System, audit_record

    approved_production_change(demo_live)
    long = "a very long value that would push the table past the card " * 2
    with transaction.atomic():
        audit_record(actor=System("import"), action="configuration.version_created",
                     object_type="configurationversion", object_id="42",
                     object_repr=f"storefront / production v42 {long}"[:100],
                     environment="production", before={"status": "draft", "note": long},
                     after={"status": "active", "note": long}, reason=long)

    login("auditor")
    page.goto(f"{live_server.url}/audit/")
    table = page.locator("table.audit-trail")
    expect(table).to_be_visible()
    card = page.locator("section.card").filter(has=table)
    # Nothing overflows the card to the right: the source column is on screen.
    overflow = card.evaluate("c => c.scrollWidth - c.clientWidth")
    assert overflow <= 0
    expect(table.get_by_role("columnheader", name="From")).to_be_in_viewport()
    # One line per event: every row is as tall as the others, however long its values.
    heights = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => r.getBoundingClientRect().height)")
    assert len(heights) > 3 and max(heights) < 1.5 * min(heights)
    screenshot("audit-trail")

    row = table.locator("tbody tr").filter(has_text="configuration.version_created")
    expect(row.locator(".kv-before")).not_to_be_visible()
    row.locator("summary").click()
    expect(row.locator(".kv-before")).to_be_visible()
    expect(row.locator(".kv-after")).to_contain_text("active")
    expect(row.locator(".reason")).to_contain_text("a very long value")
    assert card.evaluate("c => c.scrollWidth - c.clientWidth") <= 0
    screenshot("audit-trail-details")
