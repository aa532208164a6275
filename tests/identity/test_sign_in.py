"""Local sign-in on allauth: switched off, only single sign-on is left; sessions are
listed on the Security page and "sign out everywhere else" ends the others (audited)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import AuditEvent

User = get_user_model()
PASSWORD = "correct-horse-battery-staple"


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_with_local_sign_in_off_the_password_form_is_gone_and_a_post_is_refused(db, settings):
    User.objects.create_user("hana", password=PASSWORD, is_staff=True, is_superuser=True)
    settings.PORTAL_LOCAL_LOGIN = False
    client = Client()
    page = client.get("/login/").content.decode()
    assert 'type="password"' not in page and "Use a passkey" not in page
    assert "Password sign-in is switched off" in page

    refused = client.post("/login/", {"login": "hana", "password": PASSWORD})
    assert refused.status_code == 403
    assert "Password sign-in is switched off" in refused.content.decode()
    # allauth's own address is refused too, by the backend; the admin has no password
    # form of its own (it leads to the portal's sign-in, refused above).
    answer = client.post("/accounts/login/", {"login": "hana", "password": PASSWORD})
    assert answer.status_code in (200, 403)
    assert not signed_in(client)
    answer = client.post("/admin/login/", {"username": "hana", "password": PASSWORD})
    assert answer.status_code == 302 and answer["Location"].startswith("/login/")
    assert not signed_in(client)
    assert not AuditEvent.objects.filter(action="auth.login").exists()

    # Switched on again, the same password signs in.
    settings.PORTAL_LOCAL_LOGIN = True
    assert client.post("/login/", {"login": "hana", "password": PASSWORD}).status_code == 302
    assert signed_in(client)


def test_sign_out_everywhere_else_ends_the_other_sessions_only(db):
    User.objects.create_user("ivan", password=PASSWORD)
    desk = Client(REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Desk browser")
    phone = Client(REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="Phone browser")
    for client in (desk, phone):
        assert client.post("/login/", {"login": "ivan", "password": PASSWORD}).status_code == 302

    page = desk.get("/account/security/").content.decode()
    assert "Desk browser" in page and "Phone browser" in page and "203.0.113.9" in page

    answer = desk.post("/account/security/sessions/end-others", follow=True)
    assert "Signed out of 1 other session." in answer.content.decode()
    assert signed_in(desk)
    assert phone.get("/account/security/").status_code == 302  # back to the sign-in page
    assert not signed_in(phone)
    event = AuditEvent.objects.get(action="auth.sessions_ended")
    assert event.actor_name == "ivan" and event.after["ended"] == 1
    assert event.after["sessions"] == [{"ip": "203.0.113.9", "device": "Phone browser"}]
    assert "Phone browser" not in desk.get("/account/security/").content.decode()


def test_sign_up_is_closed(db):
    client = Client()
    answer = client.post("/accounts/signup/", {"username": "mallory", "password1": PASSWORD,
                                                "password2": PASSWORD})
    assert answer.status_code == 200 and "Sign-up closed" in answer.content.decode()
    assert not User.objects.filter(username="mallory").exists()
