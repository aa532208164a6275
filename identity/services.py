"""State changes of the shared core: API tokens; identity (groups from single sign-on,
second factors on the record, sessions)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from audit.models import AuditEvent
from audit.trail import System, audit_record
from core import clock
from core.errors import Conflict, Invalid, InvalidTransition, Refused, SecondFactorRequired
from identity import accounts, assurance
from identity.models import ApiToken, TokenScope, hash_token

logger = logging.getLogger(__name__)


def _clean_scopes(scopes) -> list[str]:
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in TokenScope.values]
    if unknown or not wanted:
        raise Invalid(
            f"a token needs one or more of the scopes {', '.join(TokenScope.values)}",
            fields={"scopes": [f"Choose from {', '.join(TokenScope.values)}."]})
    # Keep the order the scopes are listed in, for display.
    return [s for s in TokenScope.values if s in wanted]


def _require_issuer_may_issue_for(actor, user) -> None:
    """A person issues tokens for themselves; an administrator also for service accounts
    (CI). Nobody issues a token that acts as another person: such a token would carry
    the issuer's hand under the other person's name (approvals under names they never
    gave). The operator on the server (``manage.py issue_token``, System) is not asked."""
    if isinstance(actor, System) or actor.pk == user.pk:
        return
    if actor.is_superuser and accounts.is_service_account(user):
        return
    exc = Refused(
        f"you may not issue a token for {user.get_username()}: people make their own "
        "tokens, and administrators make tokens for service accounts only",
        code="not_permitted", fields={"user": [
            f"Not {user.get_username()}: administrators make tokens for service accounts "
            "only. Leave it empty for a token of your own."]})
    with transaction.atomic():
        audit_record(actor=actor, action="token.issue.refused", obj=user,
                     object_repr=user.get_username(),
                     after={"user": user.get_username(), "code": exc.code},
                     reason=exc.detail)
    raise exc


def api_token_issue(*, actor, user, name: str, expires_at: datetime | None = None,
                    scopes: list[str] | None = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its clear value, which is shown once and never stored.

    ``scopes`` limit what the token may do even when its user may do more
    (default: every scope).

    A person makes tokens for themselves; an administrator also for service accounts
    (``identity.accounts``). A person who holds a second factor must have used it recently
    to create one; a token made for oneself records that check
    (``identity.assurance.token_second_factor``), which counts for
    ``PORTAL_STEP_UP_SECONDS`` like a session's. Tokens issued by an operator
    (``System``, ``manage.py issue_token``) or for a service account record none; their
    owner steps up through the token (``api_token_step_up``) to decide in Production.
    """
    scopes = _clean_scopes(TokenScope.values if scopes is None else scopes)
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid("a token needs a name of 1 to 100 characters",
                      fields={"name": ["Name the token, e.g. after the pipeline using it."]})
    if expires_at is not None and expires_at <= clock.now():
        raise Invalid("the expiry must be in the future",
                      fields={"expires_at": ["Choose a time in the future."]})
    _require_issuer_may_issue_for(actor, user)
    factor = assurance.token_second_factor(actor=actor, user=user)
    raw = "cap_" + secrets.token_urlsafe(32)
    with transaction.atomic():
        if ApiToken.objects.filter(user=user, name=name).exists():
            raise Conflict(f"{user.get_username()} already has a token named {name!r}",
                           code="token_exists")
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(user=user, name=name, prefix=raw[:8],
                                                token_hash=hash_token(raw),
                                                expires_at=expires_at, scopes=scopes,
                                                second_factor=factor.kind,
                                                second_factor_at=factor.at)
        except IntegrityError:  # the same name issued concurrently
            raise Conflict(f"{user.get_username()} already has a token named {name!r}",
                           code="token_exists") from None
        audit_record(actor=actor, action="token.issued", obj=token,
                     after={"user": user.get_username(), "name": name,
                            "expires_at": expires_at, "scopes": scopes,
                            "issued_by": ("operator" if isinstance(actor, System)
                                          else "owner" if actor.pk == user.pk
                                          else "administrator"),
                            "second_factor": factor.as_audit() if factor.kind else None})
    return token, raw


MAX_CODE_LENGTH = 64


def api_token_step_up(*, actor, token: ApiToken, code: str) -> ApiToken:
    """The token's owner answers a second-factor check through the token: a code from
    their authenticator app or one of their recovery codes. The token then counts as
    checked for ``PORTAL_STEP_UP_SECONDS`` (``identity.assurance``), as a session does.

    Wrong codes are refused (403 ``wrong_code``), audited (``token.step_up.failed``)
    and limited: after
    ``PORTAL_STEP_UP_MAX_FAILURES`` in ``PORTAL_STEP_UP_FAILURE_MINUTES`` every code is
    refused (``too_many_attempts``, audited) until the oldest leaves the window. A TOTP
    code is accepted once (allauth remembers used codes, shared with the pages' check).
    Passkeys are not taken here (a WebAuthn assertion needs the browser's ceremony); a
    person with passkeys only steps up on the pages.
    """
    from allauth.mfa.models import Authenticator

    code = (code or "").strip().replace(" ", "")
    if not code or len(code) > MAX_CODE_LENGTH:
        raise Invalid("send the code your authenticator app shows, or a recovery code",
                      fields={"code": ["A code of 1 to 64 characters."]})
    if token.user_id != actor.pk:
        raise Refused("a token is checked by its owner only", code="not_permitted")
    window = timedelta(minutes=settings.PORTAL_STEP_UP_FAILURE_MINUTES)
    refusal = None
    with transaction.atomic():
        # One check at a time per person: two wrong codes sent at once are counted one
        # after the other, so the limit holds under concurrency.
        get_user_model().objects.select_for_update().filter(pk=actor.pk).first()
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        factors = list(Authenticator.objects.filter(user_id=actor.pk)
                       .exclude(type=Authenticator.Type.WEBAUTHN).order_by("type"))
        failures = AuditEvent.objects.filter(
            action="token.step_up.failed", actor_id=actor.pk,
            occurred_at__gte=clock.now() - window).count()
        if not assurance.has_second_factor(actor):
            refusal = SecondFactorRequired(
                "you have no second factor; enrol an authenticator app on your Security "
                "page first")
        elif not factors:
            refusal = Refused("you have passkeys only, which this check cannot take; "
                              "step up on the portal's pages, or add an authenticator app",
                              code="no_code_factor")
        elif failures >= settings.PORTAL_STEP_UP_MAX_FAILURES:
            refusal = Refused(
                f"too many wrong codes: {failures} in the last "
                f"{settings.PORTAL_STEP_UP_FAILURE_MINUTES} minutes; wait, then try again",
                code="too_many_attempts")
        if refusal is not None:
            audit_record(actor=actor, action="token.step_up.refused", obj=token,
                         after={"code": refusal.code, "failures": failures},
                         reason=refusal.detail)
        else:
            used = next((f for f in factors if f.wrap().validate_code(code)), None)
            if used is None:
                # 403, not 400: the request is well formed; the credential is refused.
                refusal = Refused("the code is wrong or was used already",
                                  code="wrong_code",
                                  fields={"code": ["Wrong or already used code."]})
                audit_record(actor=actor, action="token.step_up.failed", obj=token,
                             after={"code": refusal.code, "failures": failures + 1},
                             reason=refusal.detail)
            else:
                used.record_usage()
                token.second_factor, token.second_factor_at = used.type, clock.now()
                token.save(update_fields=["second_factor", "second_factor_at"])
                checked = assurance.Assurance(kind=used.type, at=token.second_factor_at,
                                              via="token")
                audit_record(actor=actor, action="token.stepped_up", obj=token,
                             after={"second_factor": checked.as_audit(),
                                    "fresh_until": checked.fresh_until()})
    # The failure and refusal records above are committed; the answer says why.
    if refusal is not None:
        raise refusal
    return token


def api_token_revoke(*, actor, token: ApiToken) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update(of=("self",)).select_related("user").get(
            pk=token.pk)
        if (getattr(actor, "pk", None) and actor.pk != token.user_id
                and not getattr(actor, "is_superuser", False)):
            raise Refused("only the token's owner or an administrator revokes it",
                          code="not_permitted")
        if token.revoked_at:
            raise InvalidTransition("the token is already revoked")
        token.revoked_at = clock.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="token.revoked", obj=token,
                     after={"user": token.user.get_username(), "name": token.name})
    return token


# --- identity: groups from the identity provider, second factors, sessions -------------------


def identity_groups_sync(*, user, claimed, group_map: dict[str, str], issuer: str,
                         claim: str = "groups") -> tuple[list[str], list[str]]:
    """Set ``user``'s mapped groups to exactly what the identity provider's claim says.

    ``claimed`` is the ID token's groups claim (a list, or one string); ``group_map``
    maps its values to portal group names. Only mapped groups change: a group given by
    hand that no claim value maps to stays. A change is one audit event naming the
    person, the groups added and removed, and the issuer. Returns (added, removed).
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    if isinstance(claimed, str):
        claimed = [claimed]
    claimed = [str(c) for c in (claimed or []) if isinstance(c, str | int)]
    managed = set(group_map.values())
    wanted = {group_map[c] for c in claimed if c in group_map}
    with transaction.atomic():
        person = get_user_model().objects.select_for_update().get(pk=user.pk)
        existing = {g.name: g for g in Group.objects.filter(name__in=managed)}
        unknown = sorted(wanted - set(existing))
        if unknown:
            logger.warning("single sign-on: mapped groups missing in the portal: %s",
                           ", ".join(unknown))
        before = sorted(person.groups.values_list("name", flat=True))
        held = set(before) & managed
        added = sorted((wanted & set(existing)) - held)
        removed = sorted(held - wanted)
        if not added and not removed:
            return [], []
        # One event for the change, written here; the generic membership receiver
        # (audit.access) stands aside for it.
        person._access_audit_recorded = True
        try:
            person.groups.remove(*[existing[n] for n in removed])
            person.groups.add(*[existing[n] for n in added])
        finally:
            person._access_audit_recorded = False
        after = sorted(person.groups.values_list("name", flat=True))
        audit_record(
            actor=System(f"identity provider {issuer}"[:200]),
            action="access.group_membership_changed", obj=person,
            object_repr=person.get_username(), before={"groups": before},
            after={"groups": after, "added": added, "removed": removed,
                   "source": "identity_provider", "issuer": issuer},
            reason=f"groups from the identity provider's {claim!r} claim at sign-in")
    return added, removed


def second_factor_record(*, user, authenticator, verb: str) -> None:
    """Audit a second factor added, removed or reset (recovery codes made anew).

    Names the kind and, for passkeys, the name the person gave; never the secret,
    the codes or the credential.
    """
    kind = authenticator.type
    name = ""
    if kind == "webauthn":
        try:
            name = str(authenticator.wrap().name or "")[:100]
        except Exception:  # a malformed credential still gets its event
            name = ""
    with transaction.atomic():
        audit_record(actor=user, action=f"mfa.authenticator_{verb}",
                     object_type="authenticator",
                     object_id=authenticator.pk or getattr(authenticator, "_audit_pk", ""),
                     object_repr=f"{user.get_username()}: {kind}"[:300],
                     after={"user": user.get_username(), "type": kind,
                            **({"name": name} if name else {})})


# A person's own identity records (django-allauth's), as the audit trail names them: what
# kind of access each is, and the fields kept on the record (never a secret: no TOTP
# seed, recovery code, credential, token, session key or provider data).
IDENTITY_RECORDS = {
    "mfa.authenticator": ("second_factor", ("type", "created_at", "last_used_at")),
    "account.emailaddress": ("email_address", ("email", "primary", "verified")),
    "socialaccount.socialaccount": ("linked_account", ("provider", "uid", "date_joined")),
    "socialaccount.socialtoken": ("sign_in_token", ("expires_at",)),
    "usersessions.usersession": ("session", ("ip", "user_agent", "created_at",
                                             "last_seen_at")),
}


def _identity_record_owner(record):
    user = getattr(record, "user", None)
    if user is None and hasattr(record, "account"):
        user = record.account.user  # a single sign-on token belongs to its linked account
    return user


def identity_record_delete(*, actor, record) -> None:
    """An administrator removes one of a person's identity records in the admin: a second
    factor (a lost phone), an e-mail address, a linked single-sign-on account or its
    token, a session (which ends it). The admin offers no way to add or edit them: that
    would let an administrator act in the person's name (enrol their own authenticator
    on someone else's account, link their own single-sign-on identity to it, receive its
    password reset), so only the person adds them, on their own pages.

    One transaction: the deletion and its access-change event
    (``access.<kind>_deleted``: the person, what it was, never a secret). Removing a
    person's last second factor removes their recovery codes with it, as allauth does
    when a person removes it themselves.
    """
    label = record._meta.label_lower
    if label not in IDENTITY_RECORDS:
        raise Invalid(f"{label} is not an identity record")
    kind, fields = IDENTITY_RECORDS[label]
    with transaction.atomic():
        record = type(record)._default_manager.select_for_update().get(pk=record.pk)
        owner = _identity_record_owner(record)
        before = {"user": owner.get_username() if owner else None,
                  **{name: getattr(record, name) for name in fields}}
        if label == "socialaccount.socialtoken":
            before["provider"] = record.app.provider if record.app_id else \
                record.account.provider
        pk = record.pk
        if label == "usersessions.usersession":
            record.end()  # the session itself, not only its row
        else:
            record.delete()
        dropped = []
        if label == "mfa.authenticator" and owner is not None:
            from allauth.mfa.models import Authenticator

            left = Authenticator.objects.filter(user_id=owner.pk)
            if not left.filter(type__in=assurance.FACTOR_KINDS).exists():
                dropped = list(left.values_list("type", flat=True))
                left.delete()
        audit_record(actor=actor, action=f"access.{kind}_deleted", object_type=kind,
                     object_id=pk, object_repr=f"{before['user']}: {kind}"[:300],
                     before=before, after={"deleted": True,
                                           **({"also_deleted": dropped} if dropped else {})})


def sessions_end_others(*, user, current_session_key: str) -> int:
    """Sign ``user`` out of every session but the one with ``current_session_key``.

    Returns how many ended; audited with the addresses and devices signed out.
    """
    from allauth.usersessions.models import UserSession

    with transaction.atomic():
        others = list(UserSession.objects.select_for_update()
                      .filter(user_id=user.pk).exclude(session_key=current_session_key))
        for session in others:
            session.end()
        audit_record(actor=user, action="auth.sessions_ended", obj=user,
                     object_repr=user.get_username(),
                     after={"ended": len(others),
                            "sessions": [{"ip": s.ip, "device": s.user_agent[:120]}
                                         for s in others]})
    return len(others)
