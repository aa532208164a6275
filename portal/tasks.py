"""Background work of the installation itself, run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="portal.tasks.portal_backup", ignore_result=True)
def portal_backup() -> None:
    """Daily: dump the portal database to PORTAL_BACKUP_DIR, keeping PORTAL_BACKUP_KEEP."""
    from audit.trail import System
    from portal.backups import backup_create

    path = backup_create(actor=System("daily backup"))
    log.info("portal database backed up to %s", path)
