"""Edits of what deployments run with, which others must hear about."""

from __future__ import annotations

import logging

from django.db import transaction

from catalog.signals import deployment_inputs_changed

logger = logging.getLogger(__name__)


def deployment_inputs_edited(*, application_id: int | None, environment_id: int | None,
                             what: str) -> None:
    """Call inside the transaction that edited what deployments run with (the admin's):
    once it commits, listeners hear of it (approvals reopen the gates concerned). A
    deployment already made keeps running what it was made with (deployments.inputs)."""

    def send() -> None:
        for receiver, result in deployment_inputs_changed.send_robust(
                sender=None, application_id=application_id, environment_id=environment_id,
                what=what):
            if isinstance(result, Exception):
                logger.error("listener %r failed on %s: %r", receiver, what, result,
                             exc_info=result)

    transaction.on_commit(send)
