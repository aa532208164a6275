"""State changes of the shared core: API tokens."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from core import assurance
from core.audit import audit_record
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from core.models import ApiToken, TokenScope, hash_token


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
