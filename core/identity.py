"""Sign-in on django-allauth: the portal's adapters, login form and page, and the
receivers that put single sign-on group changes, second factors and sessions on the
audit trail (docs/identity.md).

The rules themselves (which groups a sign-in gives, ending other sessions) are
``core.services`` functions; this module only connects allauth to them.
"""

from __future__ import annotations

import logging

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.forms import LoginForm, ReauthenticateForm
from allauth.account.signals import user_logged_in as allauth_user_logged_in
from allauth.account.views import LoginView
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.mfa.models import Authenticator
from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.providers.base.constants import AuthError
from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.shortcuts import redirect, render
from django.utils import timezone

from core import services

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
    """allauth's login form, also taking the field as ``username`` (scripts, old forms)."""

    def __init__(self, *args, **kwargs):
        data = kwargs.get("data")
        if data is not None and "login" not in data and "username" in data:
            data = data.copy()
            data["login"] = data["username"]
            kwargs["data"] = data
        super().__init__(*args, **kwargs)


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


# --- sessions: when each was last seen ---------------------------------------------------------

LAST_SEEN_KEY = "identity:session-seen:{}"


class SessionLastSeenMiddleware:
    """Notes in the cache when a signed-in session was last seen (the Security page).

    A cache write, not a database write per page; a cache outage only loses the note.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = getattr(request, "session", None)
        user = getattr(request, "user", None)
        if session is not None and session.session_key and user is not None \
                and user.is_authenticated:
            try:
                cache.set(LAST_SEEN_KEY.format(session.session_key), timezone.now(),
                          timeout=settings.SESSION_COOKIE_AGE)
            except Exception:  # noqa: BLE001 - Redis away: the page still answers
                logger.debug("session last seen not noted: cache unavailable")
        return self.get_response(request)


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


@receiver(allauth_user_logged_in, dispatch_uid="core.identity.sso_groups")
def sync_groups_from_identity_provider(sender, request, user, sociallogin=None, **kwargs):
    if sociallogin is None:
        return
    claims = (sociallogin.account.extra_data or {}).get("id_token") or {}
    services.identity_groups_sync(
        user=user, claimed=claims.get(settings.PORTAL_OIDC_GROUPS_CLAIM),
        group_map=settings.PORTAL_OIDC_GROUP_MAP, issuer=str(claims.get("iss", "")),
        claim=settings.PORTAL_OIDC_GROUPS_CLAIM)


# --- second factors ---------------------------------------------------------------------------


@receiver(pre_delete, sender=Authenticator, dispatch_uid="core.identity.mfa_pre_delete")
def remember_factor_id(sender, instance, **kwargs):
    # allauth announces a removal after the delete, when the instance has lost its id.
    instance._audit_pk = instance.pk


@receiver(authenticator_added, dispatch_uid="core.identity.mfa_added")
def audit_factor_added(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="added")


@receiver(authenticator_removed, dispatch_uid="core.identity.mfa_removed")
def audit_factor_removed(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="removed")


@receiver(authenticator_reset, dispatch_uid="core.identity.mfa_reset")
def audit_factor_reset(sender, request, user, authenticator, **kwargs):
    services.second_factor_record(user=user, authenticator=authenticator, verb="reset")
