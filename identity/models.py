"""API tokens: bearer credentials of REST clients, with their scopes and second factor."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models

from core import clock


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        now = clock.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class TokenScope(models.TextChoices):
    READ = "read", "Read"
    REQUEST = "request", "Request changes and register releases"
    APPROVE = "approve", "Approve and reject"
    DEPLOY = "deploy", "Deploy, cancel and roll back"


def all_scopes() -> list[str]:
    return list(TokenScope.values)


class ApiToken(models.Model):
    """A bearer token for REST clients. Only its SHA-256 is stored.

    Scopes limit what the token may do even when its user may do more.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, to recognise a token.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=clock.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(default=all_scopes)
    # The last check of its owner's own second factor made through it (identity.assurance):
    # at creation on the tokens page, or POST /api/v1/auth/step-up. Its kind (totp,
    # webauthn, recovery_codes; "operator" on tokens issued before operators' tokens
    # stopped carrying one, which counts for nobody) and time. It counts for
    # PORTAL_STEP_UP_SECONDS; empty or older, the token decides nothing in Production.
    second_factor = models.CharField(max_length=20, blank=True, default="")
    second_factor_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        db_table = "portal_apitoken"
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="api_token_unique_name_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
