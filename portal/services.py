"""State changes of the shared core: API tokens."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from portal.audit import audit_record
from portal.errors import Conflict, InvalidTransition
from portal.models import ApiToken, hash_token


def api_token_issue(*, actor, user, name: str, expires_at: datetime | None = None
                    ) -> tuple[ApiToken, str]:
    """Create a token and return it with its clear value, which is shown once and never stored."""
    raw = "cap_" + secrets.token_urlsafe(32)
    with transaction.atomic():
        if ApiToken.objects.filter(user=user, name=name).exists():
            raise Conflict(f"{user.get_username()} already has a token named {name!r}",
                           code="token_exists")
        token = ApiToken.objects.create(user=user, name=name, prefix=raw[:8],
                                        token_hash=hash_token(raw), expires_at=expires_at)
        audit_record(actor=actor, action="token.issued", obj=token,
                     after={"user": user.get_username(), "name": name,
                            "expires_at": expires_at})
    return token, raw


def api_token_revoke(*, actor, token: ApiToken) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at:
            raise InvalidTransition("the token is already revoked")
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="token.revoked", obj=token)
    return token
