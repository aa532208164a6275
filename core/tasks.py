"""Background work of the shared core, run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="core.tasks.idempotency_keys_purge", ignore_result=True)
def idempotency_keys_purge() -> None:
    """Hourly: forget Idempotency-Keys past their retention period (docs/api.md)."""
    from core.idempotency import idempotency_keys_purge as purge

    log.info("idempotency keys purged: %s", purge())
