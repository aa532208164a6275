"""The shared kernel's tables: idempotency keys."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class IdempotencyKey(models.Model):
    """A creating POST's Idempotency-Key, with the response to replay for a retry.

    Scoped per client (user) and resource (method and path); ``request_hash`` tells a
    retry (same body) from a misuse (different body). ``completed_at`` is empty while
    the first request runs.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=300)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "portal_idempotencykey"
        constraints = [
            # A key names one request to one resource (method and path) for one client.
            models.UniqueConstraint(fields=["user", "method", "path", "key"],
                                    name="idempotency_unique_key_per_resource"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"
