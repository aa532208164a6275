"""The main pages as each member of the cast sees them in the browser."""

import pytest
from playwright.sync_api import expect

from approvals import services as approval_services
from approvals.models import ChangeRequest
from catalog.models import Release
from core import dispatch
from deployments import services as deployment_services
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run_deployments_here(settings, deploy_root):
    """Hold deployments instead of queueing them to Celery; run() executes them in-process."""
    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()
    done = 0

    def run() -> None:
        nonlocal done
        while len(queued := dispatch.held("deployments.tasks.deployment_execute")) > done:
            deployment_services.deployment_run(deployment_id=queued[done].args[0])
            done += 1

    yield run
    dispatch.clear_held()


def deploy(actor, change) -> Deployment:
    return approval_services.change_request_deploy(actor=actor, change=change)


def test_wrong_password_is_refused_on_the_login_page(demo_live, live_server, page, screenshot):
    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(f"{live_server.url}/login/?next=/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("navigation")).to_have_count(0)
    screenshot("login")

    page.get_by_label("Username").fill("engineer")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    expect(page.get_by_label("Username")).to_have_value("engineer")
    screenshot("login-error")


def test_engineer_home_lists_own_changes_and_recent_deployments(demo_live, live_server, page,
                                                                login, screenshot,
                                                                run_deployments_here):
    engineer = demo_live.engineer
    release = Release.objects.get(version="1.1.0")
    dev = request_change(engineer, "development", release=release)
    deploy(engineer, dev)
    run_deployments_here()
    staging = request_change(engineer, "staging", release=release)
    request_change(demo_live.techlead, "staging")

    login("engineer")
    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("engineer")
    mine = page.locator("section", has=page.get_by_role("heading", name="Your changes"))
    expect(mine.locator("tbody tr")).to_have_count(2)
    expect(mine).to_contain_text(staging.reference)
    expect(mine).to_contain_text("Pending approval")
    expect(mine).to_contain_text("Deployed")
    recent = page.locator("section", has=page.get_by_role("heading", name="Recent deployments"))
    expect(recent.locator("tbody tr")).to_have_count(1)
    expect(recent).to_contain_text("Succeeded")
    screenshot("home-engineer")

    mine.get_by_role("link", name="All changes").click()
    expect(page).to_have_url(f"{live_server.url}/changes/")
    expect(page.locator("tbody tr")).to_have_count(3)
    screenshot("change-list")


def test_change_page_shows_gates_blockers_and_timeline(demo_live, live_server, page, login,
                                                      screenshot):
    change = request_change(
        demo_live.engineer, "staging", strategy="rolling", risk="medium",
        release=ReleaseFactory(checks={"tests": {"status": "passed"}}),
        impact="Checkout is read-only for about a minute.",
        rollback_plan="Switch `current` back to the previous release and restart.",
        on_call=demo_live.oncall,
    )
    approval_services.gate_approve(actor=demo_live.techlead, change=change, role="tech_lead",
                                   comment="Reviewed the diff; fine.")

    login("qa")
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    expect(page.locator("#gate-tech_lead")).to_contain_text("Approved")
    expect(page.locator("#gate-tech_lead")).to_contain_text("Reviewed the diff; fine.")
    expect(page.locator("#gate-qa")).to_contain_text("Pending")
    expect(page.locator("#gate-qa").get_by_role("button", name="Approve")).to_be_visible()
    expect(page.locator("#gate-tech_lead").get_by_role("button")).to_have_count(0)
    blockers = page.locator("section", has=page.get_by_role("heading",
                                                            name="What stands in the way"))
    expect(blockers).to_contain_text("QA approval pending (0 of 1)")
    timeline = page.locator("section", has=page.get_by_role("heading", name="Timeline"))
    expect(timeline).to_contain_text("change.created")
    expect(timeline).to_contain_text("gate.approved")
    screenshot("change-page")

    # Without HTMX in the way: the change page form posts and redirects back.
    page.locator("#gate-qa").get_by_label("Comment").fill("Regression suite green.")
    page.locator("#gate-qa").get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text("decision")
    expect(page.locator("#gate-qa")).to_contain_text("Approved")
    expect(blockers).to_contain_text("can be deployed")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    screenshot("change-page-approved")


def test_change_form_shows_what_is_missing_and_creates_nothing(demo_live, live_server, page,
                                                              login, screenshot):
    login("engineer")
    page.goto(f"{live_server.url}/changes/new/")
    page.get_by_label("Environment").select_option("staging")
    page.get_by_label("Rollback plan").fill("Redeploy 1.0.0.")
    page.get_by_role("button", name="Submit for approval").click()

    expect(page.locator("#id_release_error")).to_have_text("This field is required.")
    expect(page.get_by_label("Environment")).to_have_value("staging")
    expect(page.get_by_label("Rollback plan")).to_have_value("Redeploy 1.0.0.")
    screenshot("change-form-error")
    assert not ChangeRequest.objects.exists()

    page.get_by_label("Release").select_option(label="storefront 1.2.0")
    page.get_by_role("button", name="Submit for approval").click()
    expect(page.get_by_role("status")).to_contain_text("submitted for approval")
    change = ChangeRequest.objects.get()
    assert (change.release.version, change.environment.slug) == ("1.2.0", "staging")


def test_registering_a_release_leads_to_the_change_form(demo_live, live_server, page, login,
                                                        screenshot):
    login("engineer")
    page.get_by_role("link", name="Register a release").click()
    page.get_by_label("Application").select_option("storefront")
    page.get_by_label("Version").fill("3.0")
    page.get_by_label("Commit SHA").fill("not-hex")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#id_version_error")).to_be_visible()
    expect(page.locator("#id_commit_sha_error")).to_contain_text("7-40 hex characters")
    screenshot("release-form-error")
    assert not Release.objects.filter(version="3.0").exists()

    page.get_by_label("Version").fill("3.0.0")
    page.get_by_label("Commit SHA").fill("0a1b2d2")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("status")).to_contain_text("registered")
    expect(page.get_by_label("Release")).to_have_value(
        str(Release.objects.get(version="3.0.0").pk))


def test_deployment_history_lists_outcomes_with_filters(demo_live, live_server, page, login,
                                                        screenshot, run_deployments_here):
    engineer = demo_live.engineer
    for version, env in [("1.0.0", "development"), ("1.1.0", "development"),
                         ("1.0.0", "staging")]:
        change = request_change(engineer, env, release=Release.objects.get(version=version))
        if env == "staging":
            for role, approver in [("tech_lead", demo_live.techlead), ("qa", demo_live.qa)]:
                approval_services.gate_approve(actor=approver, change=change, role=role)
        deploy(engineer, change)
        run_deployments_here()
    queued = deploy(engineer, request_change(engineer, "development",
                                             release=Release.objects.get(version="1.2.0")))

    login("engineer")
    page.goto(f"{live_server.url}/deployments/")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text(f"#{queued.pk}")
    expect(rows.first).to_contain_text("Queued")
    expect(page.locator("tbody .badge", has_text="Succeeded")).to_have_count(3)
    screenshot("deployment-history")

    page.get_by_label("Environment").select_option("staging")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("Staging")

    rows.first.get_by_role("link", name="#").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Deployment #")
    expect(page.locator(".steps .step").first).to_be_visible()
    expect(page.locator(".steps .step:not(.step-succeeded)")).to_have_count(0)
    expect(page.get_by_label("Deployment log")).to_contain_text("Deployment succeeded")
    screenshot("deployment-detail")


def test_auditor_browses_the_audit_trail_and_an_engineer_may_not(demo_live, live_server, page,
                                                                 login, screenshot):
    change = request_change(demo_live.engineer, "staging")
    approval_services.gate_approve(actor=demo_live.techlead, change=change, role="tech_lead",
                                   comment="ok")
    approval_services.gate_reject(actor=demo_live.qa, change=change, role="qa",
                                  comment="Login flow regressed on Safari.")

    login("engineer")
    expect(page.get_by_role("navigation", name="Main")).not_to_contain_text("Audit")
    response = page.goto(f"{live_server.url}/audit/")
    assert response.status == 403

    page.context.clear_cookies()
    login("auditor")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(page.locator("tbody")).to_contain_text("gate.rejected")
    expect(page.locator("tbody")).to_contain_text("Login flow regressed on Safari.")
    screenshot("audit-list-auditor")

    page.get_by_label("Action").fill("gate.")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(2)


def test_requester_ticks_a_production_checklist_item_in_place(demo_live, live_server, page,
                                                              login, screenshot):
    change = request_change(
        demo_live.engineer, "production", release=Release.objects.get(version="1.2.0"),
        on_call=demo_live.oncall, risk="high", impact="Gift cards go live for every customer.",
        rollback_plan="Redeploy 1.1.0; gift card tables stay (additive migration).",
    )
    item = change.checklist.get(text="All code reviewed and approved")

    login("engineer")
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    checklist = page.locator("section", has=page.get_by_role("heading", name="Checklist"))
    expect(checklist.get_by_role("heading", name="Code readiness")).to_be_visible()
    row = page.locator(f"#check-{item.pk}")
    expect(row).to_have_attribute("data-done", "false")
    expect(page.locator("section", has=page.get_by_role("heading", name="What stands in the way"))
           ).to_contain_text("Change approval board approval pending")
    screenshot("change-page-production")

    row.get_by_label("Note").fill("PR #412 reviewed by two people")
    row.get_by_role("button", name="Tick").click()
    expect(row).to_have_attribute("data-done", "true")
    expect(row).to_contain_text("ticked by engineer")
    item.refresh_from_db()
    assert (item.done, item.done_by.username, item.note) == (
        True, "engineer", "PR #412 reviewed by two people")
