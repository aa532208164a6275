"""Second factors for Production (SOP 10.2): who must hold one, how recent a check a
decision needs, and where the check of the request being served comes from.

The services that own a decision call ``require_fresh_second_factor`` and put what it
returns into the decision's audit event. The check comes from the request bound to
``core.context`` (one mechanism for every road):

- a page or a session-authenticated API call: django-allauth's authentication records
  in the session (the last ``mfa`` record: its kind and time);
- an API token: the fresh check it was created with (``ApiToken.second_factor``);
- no request at all (a management command, a shell on the server): the operator, who
  vouches for the person as ``manage.py issue_token`` does.

Whoever acts, the rule that they hold a second factor of their own always applies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from core import context
from core.errors import SecondFactorRequired, StepUpRequired

# The kinds that make someone "have a second factor" (recovery codes only back them up).
FACTOR_KINDS = ("totp", "webauthn")
KIND_NAMES = {"totp": "authenticator app", "webauthn": "passkey",
              "recovery_codes": "recovery code", "operator": "operator-issued"}

# Session keys: whether the person must hold a factor and holds one (refreshed at sign-in
# and when a factor is added or removed), and when they were last seen (idle timeout).
SESSION_FLAGS = "portal_second_factor"
SESSION_SEEN = "portal_last_seen"
SEEN_WRITE_EVERY = 60  # seconds; the idle timeout is precise to this


@dataclass(frozen=True)
class Assurance:
    """The second-factor check behind an action: its kind, when, and by which road."""

    kind: str = ""  # totp, webauthn, recovery_codes, operator; "" for none
    at: datetime | None = None
    via: str = "none"  # session, token, operator, none

    def is_fresh(self, now: datetime | None = None) -> bool:
        if not self.kind or self.at is None:
            return False
        if self.via in ("token", "operator"):
            # A token holds the check it was made with for its life; the operator vouches.
            return True
        age = ((now or timezone.now()) - self.at).total_seconds()
        return age <= settings.PORTAL_STEP_UP_SECONDS

    def as_audit(self) -> dict:
        return {"kind": self.kind, "at": self.at.isoformat() if self.at else None,
                "via": self.via, "fresh": True}


def has_second_factor(user) -> bool:
    """Whether ``user`` has enrolled an authenticator app or a passkey."""
    from allauth.mfa.models import Authenticator

    if not getattr(user, "pk", None):
        return False
    return Authenticator.objects.filter(user_id=user.pk, type__in=FACTOR_KINDS).exists()


def must_have_second_factor(user) -> bool:
    """Whether the policy requires ``user`` to hold a second factor (Production powers)."""
    if not getattr(user, "pk", None) or not user.is_active:
        return False
    return bool(import_string(settings.PORTAL_SECOND_FACTOR_REQUIRED_FOR)(user))


def session_assurance(request) -> Assurance:
    """The last second-factor check of this signed-in session (allauth's records)."""
    from allauth.account.authentication import get_authentication_records

    records = [r for r in get_authentication_records(request, request.user)
               if r.get("method") == "mfa" and r.get("type")]
    if not records:
        return Assurance(via="session")
    last = records[-1]
    return Assurance(kind=str(last["type"]), via="session",
                     at=datetime.fromtimestamp(float(last["at"]), tz=UTC))


def current(actor) -> Assurance:
    """The second-factor check behind what ``actor`` is doing now (see the module)."""
    from core.models import ApiToken

    request = context.current().request
    if request is None:
        return Assurance(kind="operator", at=timezone.now(), via="operator")
    user = getattr(request, "user", None)
    if getattr(user, "pk", None) != getattr(actor, "pk", None):
        return Assurance()
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        return Assurance(kind=token.second_factor, at=token.second_factor_at, via="token")
    if not hasattr(request, "session"):
        return Assurance()
    return session_assurance(request)


def _is_person(actor) -> bool:
    """A person acting: not the portal (System), and not a signed hook acting as its
    service account (the request's credential names a ``hook``; integrations.hooks)."""
    from core.audit import System

    if isinstance(actor, System) or not getattr(actor, "pk", None):
        return False
    request = context.current().request
    return not getattr(getattr(request, "auth", None), "hook", None)


def require_fresh_second_factor(*, actor, doing: str) -> dict:
    """Refuse unless ``actor`` holds a second factor and used it within
    PORTAL_STEP_UP_SECONDS (or through a token created with a fresh check).

    ``doing`` completes "before you ...". Returns the entry for the decision's audit
    event: ``{"second_factor": {"kind", "at", "via", "fresh"}}``; ``{}`` for the portal
    acting by itself (beat, hooks acting as System), which is not asked.
    """
    if not _is_person(actor):
        return {}
    if not has_second_factor(actor):
        raise SecondFactorRequired(
            f"you need a second factor (an authenticator app or a passkey) to {doing}; "
            "enrol one on your Security page, then try again")
    assurance = current(actor)
    if not assurance.is_fresh():
        if assurance.via == "token":
            raise StepUpRequired(
                f"this API token was created without a fresh second-factor check, so it "
                f"cannot {doing}; create a new token on the API tokens page, which asks "
                "for your second factor")
        minutes = max(1, settings.PORTAL_STEP_UP_SECONDS // 60)
        raise StepUpRequired(
            f"confirm it is you with your second factor to {doing}: it was not used in "
            f"the last {minutes} minutes")
    return {"second_factor": assurance.as_audit()}


def token_second_factor(*, actor, user) -> Assurance:
    """The check a new API token for ``user`` records (``api_token_issue``).

    A person who holds a factor is asked for a fresh check before creating a token; the
    token records it when its owner holds a factor (an operator's or the portal's issue
    counts as fresh). A token of someone without a factor records none.
    """
    if _is_person(actor):
        if has_second_factor(actor):
            assurance = current(actor)
            if not assurance.is_fresh():
                minutes = max(1, settings.PORTAL_STEP_UP_SECONDS // 60)
                raise StepUpRequired(
                    "confirm it is you with your second factor before creating an API "
                    f"token: it was not used in the last {minutes} minutes")
            return assurance if has_second_factor(user) else Assurance()
        return Assurance()
    if has_second_factor(user):
        return Assurance(kind="operator", at=timezone.now(), via="operator")
    return Assurance()


# ---------------------------------------------------------------------------
# The session: who must hold a factor, the banner, and the idle timeout


def refresh_session(request, user) -> None:
    """Remember in the session whether ``user`` must hold a factor and holds one, so
    pages read it without a query."""
    if not hasattr(request, "session"):
        return
    request.session[SESSION_FLAGS] = {"required": must_have_second_factor(user),
                                      "enrolled": has_second_factor(user)}
    request.session[SESSION_SEEN] = int(time.time())


def enrol_url() -> str:
    """The page where people enrol a factor: the Security page, else allauth's own."""
    from django.urls import NoReverseMatch, reverse

    try:
        return reverse("security")
    except NoReverseMatch:
        return reverse("mfa_index")


def banner(request) -> dict:
    """Template context: ``second_factor_missing`` for people who must enrol a factor."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not hasattr(request, "session"):
        return {}
    flags = request.session.get(SESSION_FLAGS) or {}
    if flags.get("required") and not flags.get("enrolled"):
        return {"second_factor_missing": True, "second_factor_enrol_url": enrol_url()}
    return {}


class ProductionIdleTimeoutMiddleware:
    """Signs out people who must hold a second factor (Production powers) after
    PORTAL_PRODUCTION_IDLE_MINUTES without a request; others keep the normal session.

    The last request's time is written at most once a minute, so most requests write
    nothing to the session.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = getattr(request, "session", None)
        user = getattr(request, "user", None)
        if session is not None and user is not None and user.is_authenticated:
            flags = session.get(SESSION_FLAGS) or {}
            if flags.get("required"):
                now = int(time.time())
                seen = session.get(SESSION_SEEN)
                idle = settings.PORTAL_PRODUCTION_IDLE_MINUTES * 60
                if seen is not None and now - int(seen) > idle:
                    return self._sign_out(request)
                if seen is None or now - int(seen) >= SEEN_WRITE_EVERY:
                    session[SESSION_SEEN] = now
        return self.get_response(request)

    def _sign_out(self, request):
        from django.contrib import messages
        from django.contrib.auth import logout
        from django.contrib.auth.views import redirect_to_login

        from core import error_views

        minutes = settings.PORTAL_PRODUCTION_IDLE_MINUTES
        logout(request)
        if error_views.is_api(request):
            return self.get_response(request)
        messages.info(request, f"You were signed out after {minutes} minutes without "
                               "activity, as people with Production permissions are. "
                               "Sign in again to continue.")
        if request.method == "GET":
            return redirect_to_login(request.get_full_path())
        return redirect_to_login("/")


def _on_login(sender, request, user, **kwargs):
    if request is not None:
        refresh_session(request, user)


def _on_factor_change(sender, request=None, user=None, **kwargs):
    if request is not None and user is not None and getattr(request, "user", None) == user:
        refresh_session(request, user)


def connect() -> None:
    """Connected in ``CoreConfig.ready``."""
    from allauth.mfa import signals as mfa_signals
    from django.contrib.auth.signals import user_logged_in

    user_logged_in.connect(_on_login, dispatch_uid="core.assurance.login")
    mfa_signals.authenticator_added.connect(_on_factor_change,
                                            dispatch_uid="core.assurance.added")
    mfa_signals.authenticator_removed.connect(_on_factor_change,
                                              dispatch_uid="core.assurance.removed")
