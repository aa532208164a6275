"""Sign-in on django-allauth: the portal's adapters, login form and page, and the
receivers that put single sign-on group changes, second factors and sessions on the
audit trail (docs/identity.md).

The rules themselves (which groups a sign-in gives, ending other sessions) are
``identity.services`` functions; this module only connects allauth to them.
"""

from __future__ import annotations

import logging
import time
import unicodedata

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.forms import LoginForm, ReauthenticateForm
from allauth.account.signals import user_logged_in as allauth_user_logged_in
from allauth.account.views import LoginView
from allauth.core import context as allauth_context
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.mfa.base.forms import AuthenticateForm
from allauth.mfa.base.forms import ReauthenticateForm as MfaReauthenticateForm
from allauth.mfa.models import Authenticator
from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.providers.base.constants import AuthError
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models.signals import pre_delete, pre_save
from django.dispatch import receiver
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from core import clock
from core.middleware import PROBE_PATHS
from identity import services

logger = logging.getLogger(__name__)

LOCAL_LOGIN_OFF = ("Password sign-in is switched off for this portal: sign in with "
                   "single sign-on.")
WRONG_PASSWORD = ("Please enter a correct username and password. Note that both fields "
                  "may be case-sensitive.")
TOKEN_REFUSED = ("The identity provider's answer could not be verified (its signature, "
                 "issuer or audience did not match), so you were not signed in. Ask an "
                 "administrator to check the single sign-on settings.")
PROVIDER_FAILED = ("Single sign-on did not complete: the identity provider refused or "
                   "could not be reached. Try again, or ask an administrator.")
CANCELLED = "Single sign-on was cancelled at the identity provider; you are not signed in."
QUIET_MESSAGES = {"account/messages/logged_in.txt", "account/messages/logged_out.txt"}
CODE_LOCKED_OUT = ("Too many wrong codes: sign-in for this account from this address is "
                   "paused for a while.")
CODES_PAUSED = ("Too many wrong codes for this account: its second-factor codes are paused "
                "for a while. If these were not yours, tell your administrator.")
WRONG_CODE_REASON = "wrong second-factor code"


def code_failures_for_account(username: str) -> int:
    """Wrong second-factor codes for ``username`` from any address within the cool-off
    (the audit trail's ``auth.login_failed`` events; their time is indexed)."""
    from audit.models import AuditEvent

    since = clock.now() - settings.AXES_COOLOFF_TIME
    return AuditEvent.objects.filter(occurred_at__gte=since, action="auth.login_failed",
                                     object_repr=username, reason=WRONG_CODE_REASON).count()


# --- usernames: one spelling per person --------------------------------------------------------


def normalize_username(value) -> str:
    """The one spelling of a username: Unicode NFKC, lower case, no surrounding space.

    Every road that reads or writes a username goes through it (the sign-in form, the
    lockout's key, ``manage.py issue_token``, accounts from single sign-on, the audit
    trail's names), so ``qA`` is ``qa`` everywhere: the same lockout, the same account.
    """
    return unicodedata.normalize("NFKC", str(value or "")).strip().lower()


def axes_username(request, credentials=None) -> str:
    """django-axes' lockout key (AXES_USERNAME_CALLABLE): the normalised username, from
    the credentials given to ``authenticate`` or else the form's ``login``/``username``."""
    if credentials:
        name = credentials.get("username") or credentials.get("login") or ""
    else:
        data = getattr(request, "data", None) or getattr(request, "POST", {})
        name = data.get("login") or data.get("username") or ""
    return normalize_username(name)


@receiver(pre_save, sender=get_user_model(), dispatch_uid="identity.signin.username_case")
def store_normalized_username(sender, instance, **kwargs):
    # Whatever road creates or renames an account (the admin, single sign-on,
    # createsuperuser, a script), it is stored in its one spelling; the database's
    # unique index on lower(username) (migration core 0007) refuses a second account
    # that differs only in case.
    instance.username = normalize_username(instance.username)


class PortalAccountAdapter(DefaultAccountAdapter):
    """Nobody signs up: accounts come from single sign-on or an administrator."""

    error_messages = {**DefaultAccountAdapter.error_messages,
                      "username_password_mismatch": WRONG_PASSWORD}

    def is_open_for_signup(self, request) -> bool:
        return False

    def add_message(self, request, level, message_template=None, message_context=None,
                    extra_tags="", message=None):
        # Signing in and out is plain from the page itself; no banner for it.
        if message_template in QUIET_MESSAGES:
            return
        super().add_message(request, level, message_template=message_template,
                            message_context=message_context, extra_tags=extra_tags,
                            message=message)


class PortalSocialAccountAdapter(DefaultSocialAccountAdapter):
    """Single sign-on creates the account on the first sign-in (no sign-up form)."""

    def is_open_for_signup(self, request, sociallogin) -> bool:
        return True

    def get_requests_session(self):
        # The identity provider is called like every other system: through the one
        # guarded client (address rule, timeouts, size cap).
        from core import outbound

        return outbound.requests_session()

    def populate_user(self, request, sociallogin, data):
        user = super().populate_user(request, sociallogin, data)
        if not user.username:
            # No preferred_username: the e-mail address is the username.
            user.username = (data.get("email") or "")[:150]
        # "QA" from the identity provider is the portal's "qa", never a second account.
        user.username = normalize_username(user.username)
        return user

    def on_authentication_error(self, request, provider, error=None, exception=None,
                                extra_context=None):
        # Said on the sign-in page; never allauth's bare error page, never a 500.
        logger.warning("single sign-on refused: %s %s", error,
                       type(exception).__name__ if exception else "")
        if error == AuthError.CANCELLED:
            messages.info(request, CANCELLED)
        elif exception is not None and "id_token" in str(exception):
            messages.error(request, TOKEN_REFUSED)
        else:
            messages.error(request, PROVIDER_FAILED)
        raise ImmediateHttpResponse(redirect("login"))


class PortalLoginForm(LoginForm):
    """allauth's login form, also taking the field as ``username`` (scripts, old forms).

    The username is normalised before anything reads it, so the password check, the
    lockout (django-axes) and the audit trail all see the one spelling."""

    def __init__(self, *args, **kwargs):
        data = kwargs.get("data")
        if data is not None:
            data = data.copy()
            if "login" not in data and "username" in data:
                data["login"] = data["username"]
            if "login" in data:
                data["login"] = normalize_username(data["login"])
            kwargs["data"] = data
        super().__init__(*args, **kwargs)


class CodeLockoutMixin:
    """Second-factor codes counted like passwords (sign-in and step-up alike).

    A wrong code is a failed sign-in: Django's ``user_login_failed`` is sent for the
    account, so django-axes counts it against the same username and address as wrong
    passwords (AXES_*: the limit, the cool-off) and ``core.receivers`` audits it. During
    a lockout no code is checked, the right one included: the page is the lockout page.
    (allauth's own code limit shares ``login_failed`` with passwords, which django-axes
    counts instead, so it is off: ACCOUNT_RATE_LIMITS.)
    """

    stage = "second_factor"

    def clean_code(self) -> str:
        request = allauth_context.request
        credentials = {"username": self.user.get_username()}
        if AxesProxyHandler.is_locked(request, credentials):
            # Refused unchecked; marked locked first, so that django-axes neither counts
            # it nor moves the cool-off's end, and its middleware answers with the
            # lockout page.
            self._locked(request, credentials)
            self._refused(request, credentials)
            raise ValidationError(CODE_LOCKED_OUT, code="locked_out")
        if (code_failures_for_account(credentials["username"])
                >= settings.PORTAL_CODE_FAILURE_LIMIT_PER_ACCOUNT):
            # Refused unchecked, from every address, and on the record; not counted as a
            # wrong code, so the pause ends with the cool-off of the last wrong one.
            self._paused(credentials)
            raise ValidationError(CODES_PAUSED, code="codes_paused")
        try:
            return super().clean_code()
        except ValidationError:
            self._refused(request, credentials)
            if AxesProxyHandler.is_locked(request, credentials):
                self._locked(request, credentials)
            raise

    @staticmethod
    def _locked(request, credentials: dict) -> None:
        request.axes_locked_out = True
        request.axes_credentials = credentials

    def _paused(self, credentials: dict) -> None:
        from django.db import transaction

        from audit.trail import System, audit_record

        with transaction.atomic():
            audit_record(actor=System("sign-in refused"), action="auth.login_failed",
                         object_type="user", object_repr=credentials["username"],
                         after={"stage": self.stage, "paused": True},
                         reason="second-factor codes paused for this account")

    def _refused(self, request, credentials: dict) -> None:
        user_login_failed.send(sender=type(self), request=request,
                               credentials={**credentials, "second_factor": self.stage})


class PortalAuthenticateForm(CodeLockoutMixin, AuthenticateForm):
    """allauth's second-factor step at sign-in, its codes counted like passwords."""


class PortalMfaReauthenticateForm(CodeLockoutMixin, MfaReauthenticateForm):
    """allauth's second-factor step-up (before a Production decision), its codes counted
    like passwords: a stolen session cannot guess codes either."""

    stage = "step_up"


class PortalReauthenticateForm(ReauthenticateForm):
    """Confirming the password again, without allauth's reset link (no e-mail resets)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password"].help_text = ""


class PortalLoginView(LoginView):
    """``/login/``: the password form (unless PORTAL_LOCAL_LOGIN is off) and single sign-on."""

    template_name = "account/login.html"

    def dispatch(self, request, *args, **kwargs):
        if request.method == "POST" and not settings.PORTAL_LOCAL_LOGIN:
            return render(request, "account/login.html",
                          {"local_login": False, "refused": LOCAL_LOGIN_OFF}, status=403)
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["local_login"] = bool(settings.PORTAL_LOCAL_LOGIN)
        return context


def admin_login(request):
    """``/admin/login/``: the portal's sign-in page, then back to the admin.

    The admin keeps no password form of its own, so every sign-in goes through one
    flow: the password, the second factor of anyone who holds one, the lockout. A GET
    or a POST is sent on the same way; nothing here checks a password.
    """
    target = request.GET.get("next") or reverse("admin:index")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("admin:index")
    if request.user.is_authenticated:
        if request.user.is_active and request.user.is_staff:
            return redirect(target)
        # Signed in but not staff: the sign-in page would only send them back here.
        raise PermissionDenied
    return redirect_to_login(target, reverse("login"))


# --- sessions: when each was last seen ---------------------------------------------------------

LAST_SEEN_KEY = "identity:session-seen:{}"


# The Security page shows "last seen" to the minute: each process notes a session at
# most this often (seconds), so most requests neither write to the cache nor read the
# session and user for it (a request whose view needs neither never loads them).
LAST_SEEN_EVERY = 60
# Sessions each process remembers noting; forgotten all at once past this many.
LAST_SEEN_REMEMBERED = 20_000


class SessionLastSeenMiddleware:
    """Notes in the cache when a signed-in session was last seen (the Security page).

    A cache write, not a database write per page, and at most one a minute per session
    in each process; a cache outage only loses the note.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.noted: dict[str, float] = {}  # session key -> time.monotonic() noted

    def __call__(self, request):
        session = getattr(request, "session", None)
        key = session.session_key if session is not None else None
        if key and request.path_info not in PROBE_PATHS and \
                time.monotonic() - self.noted.get(key, float("-inf")) >= LAST_SEEN_EVERY:
            self._note(request, key)
        return self.get_response(request)

    def _note(self, request, key: str) -> None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return
        if len(self.noted) >= LAST_SEEN_REMEMBERED:
            self.noted.clear()
        self.noted[key] = time.monotonic()
        try:
            cache.set(LAST_SEEN_KEY.format(key), clock.now(),
                      timeout=settings.SESSION_COOKIE_AGE)
        except Exception:  # noqa: BLE001 - Redis away: the page still answers
            logger.debug("session last seen not noted: cache unavailable")


def sessions_last_seen(session_keys: list[str]) -> dict:
    """{session_key: when last seen} from the cache, for the keys it knows."""
    if not session_keys:
        return {}
    try:
        found = cache.get_many([LAST_SEEN_KEY.format(k) for k in session_keys])
    except Exception:  # noqa: BLE001
        return {}
    return {k: found[LAST_SEEN_KEY.format(k)] for k in session_keys
            if LAST_SEEN_KEY.format(k) in found}


# --- single sign-on: groups from the ID token -----------------------------------------------


@receiver(allauth_user_logged_in, dispatch_uid="identity.signin.sso_groups")
def sync_groups_from_identity_provider(sender, request, user, sociallogin=None, **kwargs):
    if sociallogin is None:
        return
    claims = (sociallogin.account.extra_data or {}).get("id_token") or {}
    services.identity_groups_sync(
        user=user, claimed=claims.get(settings.PORTAL_OIDC_GROUPS_CLAIM),
        group_map=settings.PORTAL_OIDC_GROUP_MAP, issuer=str(claims.get("iss", "")),
        claim=settings.PORTAL_OIDC_GROUPS_CLAIM)


# --- second factors ---------------------------------------------------------------------------


@receiver(pre_delete, sender=Authenticator, dispatch_uid="identity.signin.mfa_pre_delete")
def remember_factor_id(sender, instance, **kwargs):
    # allauth announces a removal after the delete, when the instance has lost its id.
    instance._audit_pk = instance.pk


@receiver(authenticator_added, dispatch_uid="identity.signin.mfa_added")
def audit_factor_added(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="added")


@receiver(authenticator_removed, dispatch_uid="identity.signin.mfa_removed")
def audit_factor_removed(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="removed")


@receiver(authenticator_reset, dispatch_uid="identity.signin.mfa_reset")
def audit_factor_reset(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="reset")
