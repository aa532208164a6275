"""Background work of the incoming hooks, run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="integrations.tasks.hook_deliveries_purge", ignore_result=True)
def hook_deliveries_purge() -> None:
    """Hourly: forget hook delivery ids past their retention (docs/api.md)."""
    from integrations.hooks import hook_deliveries_purge as purge

    log.info("hook delivery ids purged: %s", purge())
