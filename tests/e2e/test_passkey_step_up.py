"""A CAB member enrols a passkey and steps up with it to approve a Production gate, in
Chromium with a virtual authenticator (SOP 10.2)."""

import pytest
from allauth.mfa.models import Authenticator
from playwright.sync_api import expect

from approvals.models import Approval
from audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.factories import request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_cab_enrols_a_passkey_and_approves_production_with_it(
        demo_live, live_server, page, login, screenshot, virtual_passkey):
    cab = demo_live.cab
    Authenticator.objects.filter(user=cab).delete()  # a passkey will be their factor
    change = request_change(demo_live.engineer, "production", on_call=demo_live.oncall,
                            rollback_plan="Switch current back to the previous release.")
    login("cab")

    # Enrol: allauth asks for the password first (no factor yet), then adds the key.
    page.goto(f"{live_server.url}/accounts/2fa/webauthn/add/")
    if "/reauthenticate/" in page.url:
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("input[name=password]").press("Enter")
        page.wait_for_url(lambda url: "/webauthn/add/" in url)
    page.locator("input[name=name]").fill("Laptop passkey")
    page.locator("#mfa_webauthn_add").click()
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    assert Authenticator.objects.filter(user=cab, type="webauthn").exists()

    # Approve: the portal asks for the second factor, then finishes the approval.
    page.goto(f"{live_server.url}/changes/{change.pk}/")
    form = page.locator("form", has=page.get_by_role("button", name="Approve")).first
    form.get_by_label("Comment").fill("Passkey-confirmed approval")
    form.get_by_role("button", name="Approve").click()
    page.wait_for_url(lambda url: "/webauthn/reauthenticate/" in url)
    screenshot("step-up-passkey")
    assert not Approval.objects.filter(change=change).exists()
    page.locator("#mfa_webauthn_reauthenticate").click()
    page.wait_for_url(lambda url: url.rstrip("/").endswith(f"/changes/{change.pk}"))
    expect(page.get_by_role("status").first).to_contain_text("decision")

    approval = Approval.objects.get(change=change, approver=cab)
    assert approval.comment == "Passkey-confirmed approval"
    factor = AuditEvent.objects.get(action="gate.approved").after["second_factor"]
    assert factor["kind"] == "webauthn" and factor["via"] == "session"
