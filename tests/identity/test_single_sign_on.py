"""Single sign-on with a real OpenID Connect provider (django-oauth-toolkit, RS256) in
its own process: the first sign-in makes the account, groups follow the ID token's
claim at every sign-in (audited), and a wrong issuer or a forged ID token is refused
on the sign-in page without making an account."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from playwright.sync_api import expect

from audit.models import AuditEvent

pytestmark = pytest.mark.e2e

User = get_user_model()
CLIENT_ID = "change-portal"
CLIENT_SECRET = "client-secret-for-tests-only"
IDP_PASSWORD = "idp-pass-456"
GROUP_MAP = {"portal-cab": "cab", "portal-qa": "qa", "portal-security": "security"}


def sso_settings(settings, server_url: str) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {
        **settings.SOCIALACCOUNT_PROVIDERS["openid_connect"],
        "APPS": [{"provider_id": "sso", "name": "Test IdP", "client_id": CLIENT_ID,
                  "secret": CLIENT_SECRET,
                  "settings": {"server_url": server_url, "fetch_userinfo": False}}],
    }}
    settings.PORTAL_OIDC_GROUP_MAP = GROUP_MAP


@pytest.fixture
def sso(settings, identity_provider, live_server, transactional_db):
    for name in ("cab", "qa", "security", "on-call"):
        Group.objects.get_or_create(name=name)
    sso_settings(settings, identity_provider.issuer)
    identity_provider.control(
        client={"client_id": CLIENT_ID, "secret": CLIENT_SECRET,
                "redirect_uri": f"{live_server.url}/accounts/oidc/sso/login/callback/"},
        users={"alice": IDP_PASSWORD}, groups={"alice": ["portal-cab", "portal-qa", "other"]},
        forge=False)
    return identity_provider


def sign_in_with_sso(page, live_server, provider, *, at_provider: bool = True) -> None:
    """Press the portal's single sign-on button; sign in at the provider if it asks."""
    page.goto(f"{live_server.url}/login/")
    page.get_by_role("button", name="Continue with Test IdP").click()
    if at_provider:
        page.wait_for_url(f"{provider.url}/login/**")
        page.get_by_label("IdP username").fill("alice")
        page.get_by_label("IdP password").fill(IDP_PASSWORD)
        page.get_by_role("button", name="Continue").click()


def groups_of(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def test_first_sso_sign_in_makes_the_account_and_groups_follow_the_claim(
        sso, live_server, page, screenshot):
    sign_in_with_sso(page, live_server, sso)
    page.wait_for_url(f"{live_server.url}/")
    expect(page.get_by_title("Signed in as alice")).to_be_visible()
    assert groups_of("alice") == {"cab", "qa"}  # "other" maps to nothing
    first = AuditEvent.objects.get(action="access.group_membership_changed",
                                   object_repr="alice")
    assert first.actor_kind == "system" and sso.issuer in first.reason + str(first.after)
    assert first.after["added"] == ["cab", "qa"] and first.after["source"] == "identity_provider"

    # A group an administrator gave by hand, that no claim value maps to, stays.
    alice = User.objects.get(username="alice")
    alice.groups.add(Group.objects.get(name="on-call"))
    sso.control(groups={"alice": ["portal-cab", "portal-security"]})
    page.get_by_text("alice", exact=True).click()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(lambda url: "/login/" in url)

    sign_in_with_sso(page, live_server, sso, at_provider=False)  # still signed in there
    page.wait_for_url(f"{live_server.url}/")
    assert groups_of("alice") == {"cab", "security", "on-call"}
    change = AuditEvent.objects.filter(action="access.group_membership_changed",
                                       object_repr="alice").latest("id")
    assert change.after["added"] == ["security"] and change.after["removed"] == ["qa"]
    assert change.before["groups"] == ["cab", "on-call", "qa"]
    assert change.after["groups"] == ["cab", "on-call", "security"]
    assert change.after["issuer"] == sso.issuer
    assert User.objects.filter(username="alice").count() == 1
    screenshot("sso-signed-in")


def test_a_forged_id_token_is_refused_on_the_sign_in_page(sso, live_server, page, screenshot):
    sso.control(forge=True)
    try:
        sign_in_with_sso(page, live_server, sso)
        page.wait_for_url(f"{live_server.url}/login/")
        expect(page.get_by_role("status")).to_contain_text("could not be verified")
        screenshot("sso-forged-token")
    finally:
        sso.control(forge=False)
    assert not User.objects.filter(username="alice").exists()
    assert not AuditEvent.objects.filter(action="auth.login").exists()


@pytest.mark.parametrize("where, message", [
    ("closed-port", "could not be reached"),
    ("not-a-provider", "could not be reached"),
    ("other-issuer", "another issuer"),
    # Cloud metadata: refused by the outbound address rule before any request is made.
    ("metadata-address", "could not be reached"),
])
def test_a_bad_issuer_setting_is_refused_on_the_sign_in_page(identity_provider, settings, db,
                                                               where, message):
    from tests.identity.conftest import free_port

    server_url = {
        "closed-port": f"http://127.0.0.1:{free_port()}/o",
        "not-a-provider": f"{identity_provider.url}/nothing-here",
        # The provider's discovery names http://127.0.0.1:<port>/o, not this one.
        "other-issuer": f"http://localhost:{identity_provider.port}/o",
        "metadata-address": "http://169.254.169.254/o",
    }[where]
    sso_settings(settings, server_url)
    # The outbound rule refuses "localhost" unless named; this case names it.
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1", "::1", "localhost"]
    client = Client()
    response = client.post("/accounts/oidc/sso/login/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    page = client.get("/login/").content.decode()
    assert message in page and 'role="status"' in page
    assert "_auth_user_id" not in client.session
    assert not User.objects.exists()
