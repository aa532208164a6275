"""Deliveries of incoming hooks already acted on (replay protection)."""

from __future__ import annotations

from django.db import models

from core import clock


class HookDelivery(models.Model):
    """A hook delivery (or an alert) already acted on, so that a replay is not.

    ``key`` is the sender's delivery id (``webhook-id``, ``X-GitHub-Delivery``),
    the digest of a body signed without a delivery id, or an Alertmanager alert's
    fingerprint, start and status. The unique (hook, key) constraint lets one of
    two concurrent deliveries of the same id through; the other waits for it and
    is answered as a duplicate. Rows are purged after
    ``PORTAL_HOOK_DELIVERY_RETENTION_DAYS``.
    """

    hook = models.CharField(max_length=30)
    key = models.CharField(max_length=300)
    received_at = models.DateTimeField(default=clock.now, db_index=True)

    class Meta:
        db_table = "portal_hookdelivery"
        constraints = [
            models.UniqueConstraint(fields=["hook", "key"], name="hook_delivery_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.hook}:{self.key}"
