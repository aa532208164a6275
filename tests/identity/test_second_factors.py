"""Second factors through the pages: an authenticator app (TOTP) with recovery codes,
and passkeys in real Chromium with a virtual authenticator. Enrolment and removal are
audited without secrets; the Security page lists the factors.

allauth sends its second-factor signals after commit, so these tests commit
(transactional_db) like a real request does."""

from __future__ import annotations

import pyotp
import pytest
from allauth.mfa.models import Authenticator
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from audit.models import AuditEvent

User = get_user_model()
PASSWORD = "correct-horse-battery-staple"


def password_sign_in(client: Client, username: str):
    return client.post("/login/", {"login": username, "password": PASSWORD})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def enrol_totp(client: Client) -> pyotp.TOTP:
    # Adding a factor asks for the password again first (allauth's reauthentication).
    asked = client.get("/accounts/2fa/totp/activate/")
    assert asked.status_code == 302 and asked["Location"].startswith("/accounts/reauthenticate/")
    confirmed = client.post(asked["Location"], {"password": PASSWORD})
    assert confirmed.status_code == 302
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    totp = pyotp.TOTP(page.context["form"].secret)
    # A wrong code does not activate it.
    refused = client.post("/accounts/2fa/totp/activate/", {"code": "000000"})
    assert refused.status_code == 200 and "Incorrect code" in refused.content.decode()
    assert not Authenticator.objects.filter(type="totp").exists()
    answer = client.post("/accounts/2fa/totp/activate/", {"code": totp.now()})
    assert answer.status_code == 302
    return totp


def test_totp_enrolment_then_password_and_code_sign_in(transactional_db):
    user = User.objects.create_user("erin", password=PASSWORD)
    client = Client()
    assert password_sign_in(client, "erin").status_code == 302 and signed_in(client)
    totp = enrol_totp(client)
    factor = Authenticator.objects.get(user=user, type="totp")

    # On the record, without the secret.
    added = AuditEvent.objects.get(action="mfa.authenticator_added", object_id=str(factor.pk))
    assert added.actor_name == "erin" and added.after == {"user": "erin", "type": "totp"}
    secret = factor.data["secret"]
    assert secret not in str(AuditEvent.objects.values_list("before", "after", "reason"))
    security = client.get("/account/security/").content.decode()
    assert "Authenticator app (TOTP)" in security and "Recovery codes" in security
    assert secret not in security

    # Password alone is not enough now: the code is asked for.
    client.post("/logout/")
    answer = password_sign_in(client, "erin")
    assert answer.status_code == 302 and answer["Location"] == "/accounts/2fa/authenticate/"
    assert not signed_in(client)
    wrong = client.post("/accounts/2fa/authenticate/", {"code": "123456"})
    assert wrong.status_code == 200 and "Incorrect code" in wrong.content.decode()
    assert not signed_in(client)
    code = totp.now()
    assert client.post("/accounts/2fa/authenticate/", {"code": code}).status_code == 302
    assert signed_in(client)

    # The same code a second time is refused, even with the right password.
    client.post("/logout/")
    password_sign_in(client, "erin")
    reused = client.post("/accounts/2fa/authenticate/", {"code": code})
    assert reused.status_code == 200 and "Incorrect code" in reused.content.decode()
    assert not signed_in(client)


def test_removing_the_authenticator_app_is_audited(transactional_db):
    user = User.objects.create_user("fred", password=PASSWORD)
    client = Client()
    password_sign_in(client, "fred")
    enrol_totp(client)
    factor = Authenticator.objects.get(user=user, type="totp")
    assert client.post("/accounts/2fa/totp/deactivate/").status_code == 302
    assert not Authenticator.objects.filter(user=user, type="totp").exists()
    removed = AuditEvent.objects.get(action="mfa.authenticator_removed",
                                     object_id=str(factor.pk))
    assert removed.after == {"user": "fred", "type": "totp"}
    assert "Authenticator app (TOTP)" not in client.get("/account/security/").content.decode()


@pytest.mark.e2e
def test_passkey_enrolled_on_the_security_page_signs_in(transactional_db, live_server, page,
                                                         screenshot):
    user = User.objects.create_user("gina", password=PASSWORD)
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True}})

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("gina")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{live_server.url}/")
    page.get_by_text("gina", exact=True).click()
    page.get_by_role("link", name="Security").click()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_be_visible()
    screenshot("security-empty")
    page.get_by_role("link", name="Add a passkey").click()
    page.get_by_label("Password").fill(PASSWORD)  # allauth asks for it again first
    screenshot("reauthenticate")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_label("Name").fill("Laptop passkey")
    page.get_by_label("Passwordless").check()
    screenshot("passkey-add")
    page.get_by_role("button", name="Add").click()
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    passkey = Authenticator.objects.get(user=user, type="webauthn")
    assert AuditEvent.objects.filter(action="mfa.authenticator_added",
                                     object_id=str(passkey.pk),
                                     after__name="Laptop passkey").exists()
    page.goto(f"{live_server.url}/account/security/")
    expect(page.get_by_role("cell", name="Laptop passkey", exact=True)).to_be_visible()
    screenshot("security-with-passkey")

    page.get_by_text("gina", exact=True).click()
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(lambda url: "/login/" in url)
    page.get_by_role("button", name="Use a passkey").click()
    page.wait_for_url(f"{live_server.url}/")
    expect(page.get_by_title("Signed in as gina")).to_be_visible()
    assert Authenticator.objects.get(pk=passkey.pk).last_used_at is not None
