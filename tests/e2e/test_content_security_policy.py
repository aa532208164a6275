"""The main pages run in Chromium under the strict Content-Security-Policy with no
violation, and what they do with htmx and JavaScript still works (docs/security.md,
section 18).

Every test records, from before the first script of each page runs, the
``securitypolicyviolation`` events the page fires, console errors and uncaught script
errors; each page visited must end with none of them. A test that plants an inline
script and an outside image shows that the recorder sees what the policy blocks."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from django.utils import timezone
from playwright.sync_api import expect

from approvals.models import Approval, Gate
from catalog.models import Application, Environment
from deployments.models import Deployment
from tests.conftest import PASSWORD
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)

RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " "
                    + (e.sourceFile || "") + ":" + e.lineNumber);
});
"""

REQUIRED = {
    "default-src": "'self'", "script-src": "'self'", "style-src": "'self'",
    "object-src": "'none'", "base-uri": "'self'", "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def directives(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            out[name] = value.strip()
    return out


class Watch:
    """What the browser reported on the pages of one test."""

    def __init__(self, page, live_server):
        self.page, self.base = page, live_server.url
        self.console: list[str] = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", lambda m: m.type == "error" and self.console.append(
            f"{m.text} at {m.location.get('url')}"))
        page.on("pageerror", lambda e: self.console.append(f"uncaught: {e}"))

    def open(self, path: str):
        """Go to ``path``; check the policy header is on the page."""
        response = self.page.goto(self.base + path)
        assert response is not None and response.status == 200, (path, response.status)
        policy = directives(response.headers.get("content-security-policy", ""))
        for name, value in REQUIRED.items():
            assert policy.get(name, "").startswith(value), (path, name, policy)
        for source in ("'unsafe-inline'", "'unsafe-eval'"):
            assert source not in response.headers["content-security-policy"]
        return response

    def violations(self) -> list[str]:
        # Reports are queued as tasks: a round trip through the page's event loop (a
        # promise that resolves on the next task) delivers those already raised.
        self.page.wait_for_load_state("load")
        return self.page.evaluate(
            "() => new Promise(r => setTimeout(() => r(window.__csp || []), 0))")

    def assert_clean(self, where: str) -> None:
        assert self.violations() == [], where
        assert self.console == [], where


@pytest.fixture
def watch(page, live_server):
    return Watch(page, live_server)


def test_the_recorder_sees_what_the_policy_blocks(demo_live, watch, page, login):
    login("engineer")
    watch.open("/")
    # An inline script and an image from elsewhere, as an injection would add them.
    page.evaluate("""() => {
        const s = document.createElement("script");
        s.textContent = "window.__injected = true";
        document.body.appendChild(s);
        const i = document.createElement("img");
        i.src = "https://attacker.invalid/pixel.png";
        document.body.appendChild(i);
    }""")
    assert page.evaluate("() => window.__injected === undefined")
    found = " ".join(watch.violations())
    assert "script-src" in found and "img-src" in found


def test_sign_in_home_and_tokens_load_without_violations(demo_live, watch, page, login,
                                                          screenshot):
    watch.open("/login/")
    watch.assert_clean("login")
    login("engineer")
    watch.open("/")
    expect(page.get_by_title("Signed in as engineer")).to_be_visible()
    watch.assert_clean("home")
    watch.open("/tokens/")
    page.get_by_label("Name").fill("ci pipeline")
    page.get_by_role("button", name="Issue token").click()
    expect(page.get_by_text("ci pipeline").first).to_be_visible()
    watch.assert_clean("tokens")
    # The stylesheet still applies: the top bar is laid out as a flex row.
    assert page.locator("header.topbar").evaluate(
        "e => getComputedStyle(e).display") == "flex"
    screenshot("csp-home")


def test_approving_from_the_inbox_and_the_change_page_through_htmx(demo_live, watch, page,
                                                                   login, screenshot):
    change = request_change(demo_live.engineer, "staging", rollback_plan="Redeploy.")
    login("techlead")
    watch.open("/approvals/")
    card = page.locator("li.inbox-item").filter(
        has=page.get_by_role("link", name=change.reference, exact=True))
    card.get_by_label("Comment").fill("Fine")
    card.get_by_role("button", name="Approve").click()
    # htmx posts and swaps the answer into the card, under the policy.
    expect(card.get_by_role("status")).to_contain_text("Tech lead gate: Approved")
    assert page.url.endswith("/approvals/")
    watch.assert_clean("inbox")

    page.context.clear_cookies()
    login("qa")
    watch.open(f"/changes/{change.pk}/")
    page.locator("#gate-qa").get_by_label("Comment").fill("Green")
    page.locator("#gate-qa").get_by_role("button", name="Approve").click()
    expect(page.locator("#gate-qa")).to_contain_text("Approved")
    assert Gate.objects.get(change=change, role="qa").status == Gate.Status.APPROVED
    watch.assert_clean("change page")
    screenshot("csp-change-page")


def test_the_checklist_ticks_in_place(demo_live, watch, page, login):
    from catalog.models import Release

    change = request_change(
        demo_live.engineer, "production", release=Release.objects.get(version="1.2.0"),
        on_call=demo_live.oncall, risk="high", impact="Gift cards.", rollback_plan="1.1.0")
    item = change.checklist.get(text="All code reviewed and approved")
    login("engineer")
    watch.open(f"/changes/{change.pk}/")
    row = page.locator(f"#check-{item.pk}")
    row.get_by_label("Note").fill("PR #412")
    row.get_by_role("button", name="Tick").click()
    expect(row).to_have_attribute("data-done", "true")
    watch.assert_clean("checklist")


def test_the_deployment_page_and_dashboard_update_live(demo_live, watch, page, login,
                                                       screenshot):
    app = Application.objects.get(slug="storefront")
    staging = Environment.objects.get(slug="staging")
    release = ReleaseFactory()
    deployment = Deployment.objects.create(
        application=app, environment=staging, release=release, status="running",
        progress=30, started_by=demo_live.engineer, started_at=timezone.now())
    login("engineer")
    watch.open(f"/deployments/{deployment.pk}/")
    bar = page.locator('[aria-label="Deployment progress"] span')
    expect(bar).to_have_class("pct-30")
    assert 0.2 < bar.evaluate("e => e.offsetWidth / e.parentElement.offsetWidth") < 0.4
    Deployment.objects.filter(pk=deployment.pk).update(progress=70)
    # htmx polls the progress fragment; the bar follows without a reload.
    expect(bar).to_have_class("pct-70", timeout=10_000)
    assert 0.6 < bar.evaluate("e => e.offsetWidth / e.parentElement.offsetWidth") < 0.8
    screenshot("csp-deployment-live")
    watch.assert_clean("deployment page")

    page.context.clear_cookies()
    login("auditor")
    watch.open("/dashboard/")
    cell = page.locator('tr[data-application="storefront"] td[data-environment="staging"]')
    expect(cell.locator(f'[data-deployment="{deployment.pk}"]')).to_be_visible()
    Deployment.objects.filter(pk=deployment.pk).update(status="succeeded", progress=100,
                                                       finished_at=timezone.now())
    expect(cell.locator(".version")).to_have_text(release.version, timeout=10_000)
    watch.assert_clean("dashboard")
    screenshot("csp-dashboard")


def test_metrics_audit_and_configuration_pages(demo_live, watch, page, login, screenshot):
    login("auditor")
    watch.open("/metrics/")
    expect(page.locator("svg.chart-svg")).to_have_count(5)
    watch.assert_clean("metrics")
    screenshot("csp-metrics")
    watch.open("/audit/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    watch.assert_clean("audit")
    watch.open("/auditor/access/")
    watch.assert_clean("access review")

    page.context.clear_cookies()
    login("engineer")
    watch.open("/configuration/storefront/development/")
    for replicas in (2, 3):
        page.get_by_label("Configuration (YAML)").fill(f"replicas: {replicas}\n")
        page.get_by_label("Why it changes").fill(f"{replicas} replicas")
        page.get_by_role("button", name="Save as a new version").click()
        expect(page.get_by_role("status").first).to_contain_text("Saved version")
    response = watch.open("/configuration/storefront/development/diff")
    assert response.status == 200
    added = page.locator(".diff-add").first
    expect(added).to_be_visible()
    # The colours come from the stylesheet, not from an attribute the policy refuses.
    assert added.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(227, 245, 234)"
    watch.assert_clean("configuration")


def test_the_api_reference_loads_under_the_policy(demo_live, watch, page, login):
    login("engineer")
    watch.open("/api/docs/")
    expect(page.locator(".swagger-ui .info")).to_be_visible(timeout=15_000)
    watch.assert_clean("api docs")


def test_passkey_step_up_resumes_the_approval_under_the_policy(demo_live, watch, page, login,
                                                               screenshot, virtual_passkey):
    cab = demo_live.cab
    Authenticator.objects.filter(user=cab).delete()
    change = request_change(demo_live.engineer, "production", on_call=demo_live.oncall,
                            rollback_plan="Switch current back to the previous release.")
    login("cab")
    watch.open("/account/security/")
    watch.assert_clean("security page")

    page.goto(f"{watch.base}/accounts/2fa/webauthn/add/")
    if "/reauthenticate/" in page.url:
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("input[name=password]").press("Enter")
        page.wait_for_url(lambda url: "/webauthn/add/" in url)
    page.locator("input[name=name]").fill("Laptop passkey")
    page.locator("#mfa_webauthn_add").click()
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    assert Authenticator.objects.filter(user=cab, type="webauthn").exists()
    watch.assert_clean("passkey enrolment")

    watch.open(f"/changes/{change.pk}/")
    form = page.locator("form", has=page.get_by_role("button", name="Approve")).first
    form.get_by_label("Comment").fill("Passkey-confirmed approval")
    form.get_by_role("button", name="Approve").click()
    page.wait_for_url(lambda url: "/webauthn/reauthenticate/" in url)
    watch.assert_clean("step-up page")
    screenshot("csp-step-up")
    page.locator("#mfa_webauthn_reauthenticate").click()
    # The page that finishes the interrupted approval sends its form by itself, from
    # the portal's script file (no inline script).
    page.wait_for_url(lambda url: url.rstrip("/").endswith(f"/changes/{change.pk}"))
    assert Approval.objects.filter(change=change, approver=cab).exists()
    watch.assert_clean("step-up resumed")


def test_the_admin_loads_under_the_policy(demo_live, watch, page, login):
    login("admin")
    watch.open("/admin/")
    watch.open("/admin/catalog/release/")
    expect(page.locator("#result_list")).to_be_visible()
    watch.open("/admin/catalog/application/1/change/")
    watch.assert_clean("admin")
