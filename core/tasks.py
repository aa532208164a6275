"""Background work of the shared core, run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

from core.audit import audit_purge_expired

log = logging.getLogger(__name__)


@shared_task(name="core.tasks.audit_retention_purge", acks_late=True)
def audit_retention_purge() -> dict:
    """Daily: remove audit events and deployment logs past retention (SOP 13.1)."""
    result = audit_purge_expired()
    log.info("audit retention purge: %s events, %s log lines removed before %s",
             result.events_removed, result.log_lines_removed, result.cutoff.isoformat())
    return {"events_removed": result.events_removed,
            "log_lines_removed": result.log_lines_removed}


@shared_task(name="core.tasks.idempotency_keys_purge", ignore_result=True)
def idempotency_keys_purge() -> None:
    """Hourly: forget Idempotency-Keys past their retention period (docs/api.md)."""
    from core.idempotency import idempotency_keys_purge as purge

    log.info("idempotency keys purged: %s", purge())
