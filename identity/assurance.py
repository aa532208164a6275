"""Second factors for Production (SOP 10.2): who must hold one, how recent a check a
decision needs, and where the check of the request being served comes from.

The services that own a decision call ``require_fresh_second_factor`` and put what it
returns into the decision's audit event. The check comes from the request bound to
``core.context`` (one mechanism for every road):

- a page or a session-authenticated API call: django-allauth's authentication records
  in the session (the last ``mfa`` record: its kind and time);
- an API token: the last check of its owner's own second factor made through it
  (``ApiToken.second_factor``: at its creation on the tokens page, or
  ``POST /api/v1/auth/step-up``); it counts for ``PORTAL_STEP_UP_SECONDS`` as a
  session's does, never for the token's life;
- no request at all (a management command, a shell on the server): the operator.

Whoever acts, the rule that they hold a second factor of their own always applies.
Every refusal for want of a factor or of a fresh check is audited here
(``second_factor.refused``), in a transaction of its own: see ``refusals_audited``.
"""

from __future__ import annotations

import contextvars
import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils.module_loading import import_string

from core import clock, context
from core.errors import SecondFactorRequired, StepUpRequired
from core.middleware import PROBE_PATHS

# The kinds that make someone "have a second factor" (recovery codes only back them up).
FACTOR_KINDS = ("totp", "webauthn")
# The checks a token may carry: its owner's own factor, never an operator's word.
TOKEN_KINDS = ("totp", "webauthn", "recovery_codes")
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

    def age(self, now: datetime | None = None) -> int | None:
        """Seconds since the check; None without one."""
        if self.at is None:
            return None
        return int(((now or clock.now()) - self.at).total_seconds())

    def is_fresh(self, now: datetime | None = None) -> bool:
        if not self.kind or self.at is None:
            return False
        if self.via == "operator":
            # No request: someone on the server, acting now.
            return True
        # A session and a token alike: the check counts for PORTAL_STEP_UP_SECONDS.
        return self.age(now) <= settings.PORTAL_STEP_UP_SECONDS

    def fresh_until(self) -> datetime | None:
        if self.at is None:
            return None
        return self.at + timedelta(seconds=settings.PORTAL_STEP_UP_SECONDS)

    def as_audit(self, now: datetime | None = None) -> dict:
        """What the audit trail keeps of the check: its kind, time, road and age, and
        whether it was within the window (never ``fresh: true`` for an old one)."""
        return {"kind": self.kind, "at": self.at.isoformat() if self.at else None,
                "via": self.via, "age_seconds": self.age(now),
                "fresh": self.is_fresh(now)}


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
    from identity.models import ApiToken

    request = context.current().request
    if request is None:
        return Assurance(kind="operator", at=clock.now(), via="operator")
    user = getattr(request, "user", None)
    if getattr(user, "pk", None) != getattr(actor, "pk", None):
        return Assurance()
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        # Only its owner's own check counts (tokens issued by an operator once recorded
        # "operator": that is nobody's second factor).
        if token.second_factor not in TOKEN_KINDS:
            return Assurance(via="token")
        return Assurance(kind=token.second_factor, at=token.second_factor_at, via="token")
    if not hasattr(request, "session"):
        return Assurance()
    return session_assurance(request)


def _is_person(actor) -> bool:
    """A person acting: not the portal (System), and not a signed hook acting as its
    service account (the request's credential names a ``hook``; integrations.hooks)."""
    from audit.trail import System

    if isinstance(actor, System) or not getattr(actor, "pk", None):
        return False
    request = context.current().request
    return not getattr(getattr(request, "auth", None), "hook", None)


def require_fresh_second_factor(*, actor, doing: str, environment: str = "") -> dict:
    """Refuse unless ``actor`` holds a second factor and used it within
    PORTAL_STEP_UP_SECONDS (in this session, or through this token).

    ``doing`` completes "before you ..."; ``environment`` (a slug) goes on the record.
    Returns the entry for the decision's audit event: ``{"second_factor": {"kind", "at",
    "via", "age_seconds", "fresh"}}``; ``{}`` for the portal acting by itself (beat,
    hooks acting as System), which is not asked. A refusal is audited
    (``second_factor.refused``): at once outside a transaction, else by the service's
    ``refusals_audited`` once the service's transaction has rolled back.
    """
    if not _is_person(actor):
        return {}
    assurance = Assurance()
    try:
        if not has_second_factor(actor):
            raise SecondFactorRequired(
                f"you need a second factor (an authenticator app or a passkey) to {doing}; "
                "enrol one on your Security page, then try again")
        assurance = current(actor)
        if not assurance.is_fresh():
            if assurance.via == "token":
                minutes = max(1, settings.PORTAL_STEP_UP_SECONDS // 60)
                raise StepUpRequired(
                    f"this API token has no check of your second factor from the last "
                    f"{minutes} minutes, so it cannot {doing}; send a code from your "
                    "authenticator app to POST /api/v1/auth/step-up with this token "
                    "(portalctl asks for it), then try again")
            minutes = max(1, settings.PORTAL_STEP_UP_SECONDS // 60)
            raise StepUpRequired(
                f"confirm it is you with your second factor to {doing}: it was not used in "
                f"the last {minutes} minutes")
    except (SecondFactorRequired, StepUpRequired) as exc:
        exc.refusal = {"actor": actor, "doing": doing, "environment": environment,
                       "second_factor": assurance.as_audit()}
        if not connection.in_atomic_block:
            record_refusal(exc)
        raise
    return {"second_factor": assurance.as_audit()}


# How deep the calls of services wrapped in ``refusals_audited`` are, so that only the
# outermost one writes the refusal (an inner one is inside a transaction that rolls back).
_service_depth: contextvars.ContextVar[int] = contextvars.ContextVar(
    "second_factor_service_depth", default=0)


def record_refusal(exc) -> None:
    """Audit a refusal for want of a (fresh) second factor, once, in its own transaction
    so that it survives the refusal."""
    from audit.trail import audit_record

    refusal = getattr(exc, "refusal", None)
    if not refusal or getattr(exc, "refusal_recorded", False):
        return
    actor = refusal["actor"]
    with transaction.atomic():
        audit_record(actor=actor, action="second_factor.refused", object_type="user",
                     object_id=actor.pk, object_repr=actor.get_username(),
                     environment=refusal["environment"],
                     after={"code": exc.code, "doing": refusal["doing"],
                            "second_factor": refusal["second_factor"]},
                     reason=exc.detail)
    exc.refusal_recorded = True


def refusals_audited(service):
    """Wrap a service that may call ``require_fresh_second_factor`` inside its own
    transaction: once that transaction has rolled back, the refusal is written to the
    trail in a transaction of its own (by the outermost such service only)."""

    @functools.wraps(service)
    def wrapper(*args, **kwargs):
        depth = _service_depth.set(_service_depth.get() + 1)
        try:
            return service(*args, **kwargs)
        except (SecondFactorRequired, StepUpRequired) as exc:
            if _service_depth.get() == 1:
                record_refusal(exc)
            raise
        finally:
            _service_depth.reset(depth)

    return wrapper


def token_second_factor(*, actor, user) -> Assurance:
    """The check a new API token for ``user`` records (``api_token_issue``).

    A person who holds a factor is asked for a fresh check before creating a token. A
    token records that check only when it is its owner's own: a token someone makes for
    themselves. A token made for someone else (an administrator's for a service
    account) or by an operator (``manage.py issue_token``) records none; its owner
    steps up through it (``POST /api/v1/auth/step-up``) before a Production decision.
    """
    if not _is_person(actor):
        return Assurance()
    if not has_second_factor(actor):
        return Assurance()
    assurance = current(actor)
    if not assurance.is_fresh():
        minutes = max(1, settings.PORTAL_STEP_UP_SECONDS // 60)
        raise StepUpRequired(
            "confirm it is you with your second factor before creating an API "
            f"token: it was not used in the last {minutes} minutes")
    if actor.pk != user.pk or assurance.kind not in TOKEN_KINDS:
        return Assurance()
    return assurance


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
        if request.path_info in PROBE_PATHS:
            return self.get_response(request)
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

    user_logged_in.connect(_on_login, dispatch_uid="identity.assurance.login")
    mfa_signals.authenticator_added.connect(_on_factor_change,
                                            dispatch_uid="identity.assurance.added")
    mfa_signals.authenticator_removed.connect(_on_factor_change,
                                              dispatch_uid="identity.assurance.removed")
