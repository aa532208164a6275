"""State changes of the shared core: API tokens; identity (groups from single sign-on,
second factors on the record, sessions)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from core import assurance
from core.audit import System, audit_record
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from core.models import ApiToken, TokenScope, hash_token

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


def api_token_issue(*, actor, user, name: str, expires_at: datetime | None = None,
                    scopes: list[str] | None = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its clear value, which is shown once and never stored.

    ``scopes`` limit what the token may do even when its user may do more
    (default: every scope).

    A person who holds a second factor must have used it recently to create one; the
    token records that check (``core.assurance.token_second_factor``), without which it
    decides nothing in Production.
    """
    scopes = _clean_scopes(TokenScope.values if scopes is None else scopes)
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid("a token needs a name of 1 to 100 characters",
                      fields={"name": ["Name the token, e.g. after the pipeline using it."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("the expiry must be in the future",
                      fields={"expires_at": ["Choose a time in the future."]})
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
                            "second_factor": factor.as_audit() if factor.kind else None})
    return token, raw


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
        token.revoked_at = timezone.now()
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
        # (core.access_audit) stands aside for it.
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
