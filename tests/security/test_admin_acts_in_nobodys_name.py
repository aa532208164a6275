"""The Django admin acts in nobody's name: a person's second factors, e-mail addresses,
single-sign-on logins, their tokens and sessions are shown and may be deleted (on the
record as access changes), never added or edited for them; a password an administrator
sets is on the record too."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client

from audit.models import AuditEvent
from tests.conftest import PASSWORD


@pytest.fixture
def admin_client(demo) -> Client:
    client = Client()
    assert client.login(username="admin", password=PASSWORD)  # as the suite signs in
    return client


def since(mark: int, action: str):
    return AuditEvent.objects.filter(id__gt=mark, action=action)


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db
def test_the_admin_cannot_add_or_edit_someones_second_factor(admin_client, demo):
    factor = Authenticator.objects.get(user=demo.cab, type="totp")
    stored, count = dict(factor.data), Authenticator.objects.count()
    mark = last_event_id()

    # The administrator's own authenticator app, enrolled on CAB's account: refused.
    assert admin_client.get("/admin/mfa/authenticator/add/").status_code == 403
    answer = admin_client.post("/admin/mfa/authenticator/add/", {
        "user": demo.cab.pk, "type": "totp", "data": '{"secret": "ADMINSOWNSECRET234"}',
        "created_at_0": "2026-01-01", "created_at_1": "00:00:00"})
    assert answer.status_code == 403
    # ... nor swapped into the factor CAB already has.
    answer = admin_client.post(f"/admin/mfa/authenticator/{factor.pk}/change/", {
        "user": demo.cab.pk, "type": "totp", "data": '{"secret": "ADMINSOWNSECRET234"}'})
    assert answer.status_code == 403
    # A passkey (it signs in without a password) likewise.
    answer = admin_client.post("/admin/mfa/authenticator/add/", {
        "user": demo.cab.pk, "type": "webauthn", "data": '{"credential": {}}'})
    assert answer.status_code == 403

    factor.refresh_from_db()
    assert factor.data == stored and Authenticator.objects.count() == count
    assert not Authenticator.objects.filter(user=demo.cab, type="webauthn").exists()
    assert not since(mark, "mfa.authenticator_added").exists()
    # Seen, without its secret.
    page = admin_client.get(f"/admin/mfa/authenticator/{factor.pk}/change/")
    assert page.status_code == 200
    assert stored["secret"] not in page.content.decode()
    assert "Add authenticator" not in admin_client.get(
        "/admin/mfa/authenticator/").content.decode()


@pytest.mark.django_db
def test_deleting_someones_second_factor_in_the_admin_is_an_audited_access_change(
        admin_client, demo):
    factor = Authenticator.objects.get(user=demo.cab, type="totp")
    codes = Authenticator.objects.create(user=demo.cab, type="recovery_codes",
                                         data={"seed": "s33d-never-on-the-record"})
    mark = last_event_id()

    answer = admin_client.post(f"/admin/mfa/authenticator/{factor.pk}/delete/", {"post": "yes"})

    assert answer.status_code == 302
    assert not Authenticator.objects.filter(pk__in=[factor.pk, codes.pk]).exists()
    event = since(mark, "access.second_factor_deleted").get()
    assert event.actor_name == "admin" and event.object_id == str(factor.pk)
    assert event.before["user"] == "cab" and event.before["type"] == "totp"
    # Recovery codes without a factor go with it, as when a person removes their own.
    assert event.after["also_deleted"] == ["recovery_codes"]
    recorded = str(event.before) + str(event.after)
    assert "s33d" not in recorded and "secret" not in recorded

    # The list's bulk deletion goes the same way.
    other = Authenticator.objects.get(user=demo.security, type="totp")
    answer = admin_client.post("/admin/mfa/authenticator/", {
        "action": "delete_selected", "_selected_action": [other.pk], "post": "yes"})
    assert answer.status_code == 302
    assert not Authenticator.objects.filter(pk=other.pk).exists()
    assert since(mark, "access.second_factor_deleted").filter(
        object_id=str(other.pk), actor_name="admin").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["account/emailaddress", "socialaccount/socialaccount",
                                  "socialaccount/socialtoken", "usersessions/usersession",
                                  "socialaccount/socialapp"])
def test_the_admin_cannot_make_other_identity_records_for_a_person(admin_client, demo, path):
    # An e-mail address, a single-sign-on login, its token or a session of someone else's,
    # or an identity provider of the administrator's own.
    listed = admin_client.get(f"/admin/{path}/")
    assert listed.status_code == 200 and f'href="/admin/{path}/add/"' not in \
        listed.content.decode()
    mark = last_event_id()
    answer = admin_client.post(f"/admin/{path}/add/", {
        "user": demo.cab.pk, "email": "admin@example.com", "verified": "on",
        "primary": "on", "provider": "openid_connect", "uid": "admins-own-subject",
        "token": "t", "ip": "127.0.0.1", "user_agent": "x", "session_key": "k",
        "name": "sso", "provider_id": "sso", "client_id": "admins-idp", "secret": "s",
        "settings": '{"server_url": "https://idp.admin.example"}'})
    assert answer.status_code == 403
    from allauth.account.models import EmailAddress
    from allauth.socialaccount.models import SocialAccount

    assert not EmailAddress.objects.filter(user=demo.cab, email="admin@example.com").exists()
    assert not SocialAccount.objects.filter(uid="admins-own-subject").exists()
    from allauth.socialaccount.models import SocialApp

    assert not SocialApp.objects.filter(client_id="admins-idp").exists()
    assert not AuditEvent.objects.filter(id__gt=mark).exclude(
        action__startswith="auth.").exists()


@pytest.mark.django_db
def test_an_email_address_and_a_linked_login_are_edited_by_nobody_and_deleted_on_the_record(
        admin_client, demo):
    from allauth.account.models import EmailAddress
    from allauth.socialaccount.models import SocialAccount

    email = EmailAddress.objects.create(user=demo.cab, email="cab@example.com",
                                        primary=True, verified=True)
    linked = SocialAccount.objects.create(user=demo.cab, provider="openid_connect",
                                          uid="cab-subject", extra_data={"id_token": "xyz"})
    answer = admin_client.post(f"/admin/account/emailaddress/{email.pk}/change/", {
        "user": demo.cab.pk, "email": "admin@example.com", "verified": "on",
        "primary": "on"})
    assert answer.status_code == 403
    answer = admin_client.post(f"/admin/socialaccount/socialaccount/{linked.pk}/change/", {
        "user": demo.cab.pk, "provider": "openid_connect", "uid": "admins-own-subject"})
    assert answer.status_code == 403
    email.refresh_from_db()
    linked.refresh_from_db()
    assert (email.email, linked.uid) == ("cab@example.com", "cab-subject")
    mark = last_event_id()

    for path, pk in (("account/emailaddress", email.pk),
                     ("socialaccount/socialaccount", linked.pk)):
        answer = admin_client.post(f"/admin/{path}/{pk}/delete/", {"post": "yes"})
        assert answer.status_code == 302

    gone = since(mark, "access.email_address_deleted").get()
    assert gone.actor_name == "admin" and gone.before["email"] == "cab@example.com"
    unlinked = since(mark, "access.linked_account_deleted").get()
    assert unlinked.before["uid"] == "cab-subject" and "xyz" not in str(unlinked.before)


@pytest.mark.django_db
def test_a_password_set_for_someone_in_the_admin_is_an_audited_access_change(admin_client,
                                                                            demo):
    mark = last_event_id()
    answer = admin_client.post(f"/admin/auth/user/{demo.qa.pk}/password/", {
        "password1": "Admin-knows-it-now-42", "password2": "Admin-knows-it-now-42",
        "usable_password": "true"})
    assert answer.status_code == 302
    event = since(mark, "access.password_set_in_admin").get()
    assert event.actor_name == "admin" and event.after == {"user": "qa",
                                                           "usable_password": True}
    assert "pbkdf2" not in str(event.after) and "md5" not in str(event.after)
