"""Background work of the audit trail, run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

from audit.retention import audit_purge_expired

log = logging.getLogger(__name__)


@shared_task(name="audit.tasks.audit_retention_purge", acks_late=True)
def audit_retention_purge() -> dict:
    """Daily: remove audit events and deployment logs past retention (SOP 13.1)."""
    result = audit_purge_expired()
    log.info("audit retention purge: %s events, %s log lines removed before %s",
             result.events_removed, result.log_lines_removed, result.cutoff.isoformat())
    return {"events_removed": result.events_removed,
            "log_lines_removed": result.log_lines_removed}


@shared_task(name="audit.tasks.audit_checkpoint_sign", ignore_result=True)
def audit_checkpoint_sign(reason: str = "schedule") -> dict:
    """Every minute, and after a production deployment ends: sign the chain head and
    hand the checkpoint to the witnesses (audit.checkpoints)."""
    from audit.checkpoints import checkpoint_sign

    result = checkpoint_sign(reason=reason)
    if result.checkpoint is not None:
        log.info("audit checkpoint: event %s signed by key %s, witnessed by %s%s",
                 result.checkpoint.event_id, result.checkpoint.key_id,
                 ", ".join(result.witnessed) or "nobody",
                 f"; NOT by {', '.join(result.failed)}" if result.failed else "")
    return {"event_id": result.checkpoint.event_id if result.checkpoint else None,
            "skipped": result.skipped, "witnessed": result.witnessed,
            "failed": result.failed}
