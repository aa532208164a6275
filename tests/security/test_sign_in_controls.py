"""One sign-in flow for every form (docs/security.md section 10).

Each test tries a way around the sign-in as an attacker would: the admin's own login
form, guessing second-factor codes, changing a username's case, a password reset by
e-mail. Each is refused, nothing changes, and the refusals are on the audit trail.
"""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount, SocialLogin
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client, RequestFactory
from django.urls import reverse

from audit.models import AuditEvent
from identity.models import ApiToken
from identity.signin import PortalSocialAccountAdapter
from tests.conftest import PASSWORD, totp_code

User = get_user_model()
LOCKED_MESSAGE = "Too many failed attempts, try again in 15 minutes."
CODE_PAGE = "/accounts/2fa/authenticate/"


def signed_in_as(client: Client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id).username if user_id else None


def password_step(client: Client, username: str, password: str = PASSWORD, *,
                  next_url: str = ""):
    data = {"login": username, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post("/login/", data)


def wrong_codes(count: int) -> list[str]:
    """Codes that are not valid now, nor one period either side (the tolerance)."""
    valid = {totp_code(step=s) for s in (-2, -1, 0, 1, 2)}
    codes, n = [], 0
    while len(codes) < count:
        n += 1
        code = f"{(int(totp_code()) + n * 104729) % 1_000_000:06d}"
        if code not in valid and code not in codes:
            codes.append(code)
    return codes


def holds_totp(username: str) -> bool:
    return Authenticator.objects.filter(user__username=username, type="totp").exists()


# --- 1. the admin's login form is the portal's sign-in --------------------------------------


def test_a_password_posted_to_the_admin_login_gives_no_session(demo):
    attacker = Client(REMOTE_ADDR="203.0.113.21")
    answer = attacker.post("/admin/login/?next=/admin/",
                           {"username": "admin", "password": PASSWORD, "next": "/admin/"})

    # Sent to the portal's sign-in, with nothing checked and nobody signed in.
    assert answer.status_code == 302
    assert answer["Location"].startswith("/login/?next=")
    assert signed_in_as(attacker) is None
    assert attacker.get("/admin/").status_code == 302
    assert attacker.get("/admin/auth/user/").status_code == 302
    assert attacker.get("/changes/").status_code == 302
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def test_the_admin_login_sends_a_person_through_password_and_code_back_to_the_admin(demo):
    assert holds_totp("admin")
    client = Client(REMOTE_ADDR="198.51.100.21")
    to_admin = client.get("/admin/")
    assert to_admin.status_code == 302 and to_admin["Location"].startswith("/admin/login/")
    to_login = client.get(to_admin["Location"])
    assert to_login.status_code == 302
    assert to_login["Location"] == "/login/?next=/admin/"
    assert client.get(to_login["Location"]).status_code == 200

    # The password alone is not a session: the second factor is asked for.
    answer = password_step(client, "admin", next_url="/admin/")
    assert answer.status_code == 302 and answer["Location"] == CODE_PAGE
    assert signed_in_as(client) is None
    assert client.get("/admin/").status_code == 302

    answer = client.post(CODE_PAGE, {"code": totp_code()})
    assert answer.status_code == 302 and answer["Location"] == "/admin/"
    assert signed_in_as(client) == "admin"
    assert client.get("/admin/").status_code == 200
    assert AuditEvent.objects.filter(action="auth.login", actor_name="admin").count() == 1


def test_the_admin_login_cannot_send_a_person_elsewhere(demo):
    client = Client()
    answer = client.get("/admin/login/?next=https://evil.example/")
    assert answer.status_code == 302 and answer["Location"] == "/login/?next=/admin/"


def test_a_signed_in_person_who_is_not_staff_is_refused_the_admin(demo):
    client = Client()
    client.force_login(demo.engineer)
    answer = client.get("/admin/", follow=True)
    assert answer.status_code == 403
    assert client.get("/admin/auth/user/").status_code == 302


# --- 4. second-factor codes at sign-in are counted and locked like passwords ------------------


def test_wrong_codes_at_sign_in_lock_the_account_out_and_are_audited(demo):
    assert holds_totp("cab")
    attacker = Client(REMOTE_ADDR="203.0.113.44")
    assert password_step(attacker, "cab")["Location"] == CODE_PAGE
    limit = settings.AXES_FAILURE_LIMIT
    for attempt, code in enumerate(wrong_codes(limit), start=1):
        answer = attacker.post(CODE_PAGE, {"code": code})
        if attempt < limit:
            assert answer.status_code == 200
            assert "Incorrect code" in answer.content.decode()
        else:  # the limit's failure locks, as for passwords
            assert answer.status_code == 429
            assert LOCKED_MESSAGE in answer.content.decode()
    assert signed_in_as(attacker) is None

    # The right code does not help during the cool-off, nor does the password again.
    answer = attacker.post(CODE_PAGE, {"code": totp_code()})
    assert answer.status_code == 429 and signed_in_as(attacker) is None
    fresh = Client(REMOTE_ADDR="203.0.113.44")
    answer = password_step(fresh, "cab")
    assert answer.status_code == 429 and signed_in_as(fresh) is None

    # On the record: each wrong code (and the refused right one), without the code;
    # the lockout once.
    failed = AuditEvent.objects.filter(action="auth.login_failed", object_repr="cab")
    code_failures = failed.filter(after__stage="second_factor")
    assert code_failures.count() == limit + 1
    assert all(e.reason == "wrong second-factor code" for e in code_failures)
    trail = str(list(failed.values_list("before", "after", "reason")))
    assert not any(code in trail for code in wrong_codes(limit))
    locked = AuditEvent.objects.get(action="auth.locked_out")
    assert locked.object_repr == "cab" and locked.after["ip"] == "203.0.113.44"

    # The owner at another address signs in with password and code.
    owner = Client(REMOTE_ADDR="198.51.100.44")
    assert password_step(owner, "cab")["Location"] == CODE_PAGE
    assert owner.post(CODE_PAGE, {"code": totp_code(step=1)}).status_code == 302
    assert signed_in_as(owner) == "cab"


def test_wrong_codes_from_many_addresses_pause_the_accounts_codes(demo, settings):
    # Someone with the password tries codes from several addresses, each below the
    # per-address limit: the account's own limit stops them all.
    settings.PORTAL_CODE_FAILURE_LIMIT_PER_ACCOUNT = 6
    per_address = settings.AXES_FAILURE_LIMIT - 1
    guesses = iter(wrong_codes(6))
    for address in ("203.0.113.61", "203.0.113.62"):
        attacker = Client(REMOTE_ADDR=address)
        assert password_step(attacker, "cab")["Location"] == CODE_PAGE
        for _ in range(min(per_address, 3)):
            answer = attacker.post(CODE_PAGE, {"code": next(guesses)})
            assert answer.status_code == 200 and "Incorrect code" in answer.content.decode()

    # From a third address, even the right code is refused unchecked, and said why.
    third = Client(REMOTE_ADDR="203.0.113.63")
    assert password_step(third, "cab")["Location"] == CODE_PAGE
    answer = third.post(CODE_PAGE, {"code": totp_code()})
    assert answer.status_code == 200 and signed_in_as(third) is None
    assert "second-factor codes are paused" in answer.content.decode()
    paused = AuditEvent.objects.get(action="auth.login_failed", object_repr="cab",
                                    after__paused=True)
    assert paused.after["stage"] == "second_factor"
    # Wrong passwords never pause anyone's codes: another account is untouched.
    other = Client(REMOTE_ADDR="203.0.113.63")
    assert password_step(other, "security")["Location"] == CODE_PAGE
    assert other.post(CODE_PAGE, {"code": totp_code(step=1)}).status_code == 302
    assert signed_in_as(other) == "security"


def test_wrong_passwords_and_wrong_codes_add_up_to_one_limit(demo):
    attacker = Client(REMOTE_ADDR="203.0.113.45")
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 2):
        assert password_step(attacker, "cab", "wrong-guess").status_code == 200
    assert password_step(attacker, "cab")["Location"] == CODE_PAGE
    first, second = wrong_codes(2)
    assert attacker.post(CODE_PAGE, {"code": first}).status_code == 200
    assert attacker.post(CODE_PAGE, {"code": second}).status_code == 429
    assert attacker.post(CODE_PAGE, {"code": totp_code()}).status_code == 429
    assert signed_in_as(attacker) is None
    assert AuditEvent.objects.filter(action="auth.locked_out", object_repr="cab").count() == 1


def test_wrong_codes_at_a_step_up_lock_out_too(demo):
    # A stolen session (password known, no code) guessing the step-up before a
    # Production decision meets the same limit.
    thief = Client(REMOTE_ADDR="203.0.113.46")
    thief.force_login(demo.cab)
    url = reverse("mfa_reauthenticate")
    limit = settings.AXES_FAILURE_LIMIT
    answers = [thief.post(url, {"code": code}).status_code for code in wrong_codes(limit)]
    assert answers == [200] * (limit - 1) + [429]
    assert thief.post(url, {"code": totp_code()}).status_code == 429
    methods = thief.session.get("account_authentication_methods", [])
    assert not any(m.get("method") == "mfa" for m in methods)
    refused = AuditEvent.objects.filter(action="auth.login_failed", object_repr="cab",
                                        after__stage="step_up")
    assert refused.count() == limit + 1
    assert AuditEvent.objects.filter(action="auth.locked_out", object_repr="cab").count() == 1


# --- 5. a username has one spelling --------------------------------------------------------


def test_a_locked_username_stays_locked_in_another_case(demo):
    attacker = Client(REMOTE_ADDR="203.0.113.55")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        password_step(attacker, "qa", "wrong-guess")
    for spelling in ("qA", "QA", " Qa "):
        answer = password_step(attacker, spelling)
        assert answer.status_code == 429 and LOCKED_MESSAGE in answer.content.decode()
        assert signed_in_as(attacker) is None

    # The lock is not cleared, and every attempt is on the record under one name.
    attempt = AccessAttempt.objects.get(ip_address="203.0.113.55")
    assert attempt.username == "qa"
    assert attempt.failures_since_start >= settings.AXES_FAILURE_LIMIT
    names = set(AuditEvent.objects.filter(action__in=["auth.login_failed", "auth.locked_out"])
                .values_list("object_repr", flat=True))
    assert names == {"qa"}
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == \
        settings.AXES_FAILURE_LIMIT + 3


def test_a_username_in_another_case_is_the_same_account(demo):
    client = Client(REMOTE_ADDR="198.51.100.55")
    assert password_step(client, "QA").status_code == 302
    assert signed_in_as(client) == "qa"
    assert AuditEvent.objects.get(action="auth.login").actor_name == "qa"
    assert User.objects.filter(username__iexact="qa").count() == 1


def test_a_second_account_differing_only_in_case_is_refused(demo):
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user("QA", password="another-password-entirely")
    assert User.objects.filter(username__iexact="qa").count() == 1

    # Through the admin, signed in by the one flow.
    admin = Client(REMOTE_ADDR="198.51.100.56")
    password_step(admin, "admin")
    assert admin.post(CODE_PAGE, {"code": totp_code()}).status_code == 302
    answer = admin.post("/admin/auth/user/add/", {
        "username": "QA", "password1": "another-password-entirely",
        "password2": "another-password-entirely", "usable_password": "true"})
    assert answer.status_code == 200
    assert "already exists" in answer.content.decode()
    assert User.objects.filter(username__iexact="qa").count() == 1

    # An account the admin adds is stored in its one spelling.
    answer = admin.post("/admin/auth/user/add/", {
        "username": "NewPerson", "password1": "another-password-entirely",
        "password2": "another-password-entirely", "usable_password": "true"})
    assert answer.status_code == 302
    assert User.objects.filter(username="newperson").exists()
    assert not User.objects.filter(username="NewPerson").exists()

    # Renaming an account to another's name in another case is a form error, not a 500.
    engineer = demo.engineer
    page = admin.get(f"/admin/auth/user/{engineer.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items()
            if value is not None and name not in ("password", "groups", "user_permissions",
                                                  "last_login", "date_joined")}
    data.update({"username": "QA", "date_joined_0": "2026-01-01",
                 "date_joined_1": "00:00:00"})
    answer = admin.post(f"/admin/auth/user/{engineer.pk}/change/", data)
    assert answer.status_code == 200
    assert "already exists" in answer.content.decode()
    engineer.refresh_from_db()
    assert engineer.username == "engineer"


def test_single_sign_on_names_the_account_in_its_one_spelling(db):
    request = RequestFactory().get("/accounts/oidc/sso/login/callback/")
    sociallogin = SocialLogin(user=User(), account=SocialAccount(provider="sso"))
    user = PortalSocialAccountAdapter(request).populate_user(
        request, sociallogin, {"username": "Dana.Smith", "email": "Dana@example.com"})
    assert user.username == "dana.smith"
    nameless = PortalSocialAccountAdapter(request).populate_user(
        request, SocialLogin(user=User(), account=SocialAccount(provider="sso")),
        {"email": "Eve.Jones@Example.com"})
    assert nameless.username == "eve.jones@example.com"


def test_issue_token_names_the_account_in_any_case(demo, capsys):
    call_command("issue_token", "QA", "--name", "case-test")
    raw = capsys.readouterr().out.strip()
    token = ApiToken.objects.get(name="case-test")
    assert token.user == demo.qa and raw
    assert Client().get("/api/v1/changes/",
                        HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200


# --- 6. no password reset by e-mail --------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/accounts/password/reset/",
    "/accounts/password/reset/done/",
    "/accounts/password/reset/key/1-set-password/",
    "/accounts/password/reset/key/done/",
])
def test_password_reset_by_email_is_not_offered(demo, mailoutbox, path):
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    assert attacker.get(path).status_code == 404
    answer = attacker.post(path, {"email": "qa@example.com", "password1": "taken-over-1234",
                                  "password2": "taken-over-1234"})
    assert answer.status_code == 404
    assert mailoutbox == []
    qa = demo.qa
    qa.refresh_from_db()
    assert qa.check_password(PASSWORD)
    assert signed_in_as(attacker) is None


def test_the_sign_in_page_offers_no_reset_link(demo):
    page = Client().get("/login/").content.decode()
    assert "/accounts/password/reset/" not in page

