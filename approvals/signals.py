"""Domain events of the approval workflow.

Each is sent once the transaction that made it has committed (``send_after_commit``),
never inside it: a listener (notifications, for one) that fails or is slow can neither
undo nor hold up the decision. A change rolled back sends nothing. The sender is
``ChangeRequest``; every event carries ``change_id`` and ``at`` (when it happened).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

# Submitted for approval. Also: status (the change's status after submission).
change_submitted = Signal()
# An approval given on a gate (which may need more). Also: role, change_status (the
# change's status after it).
gate_approved = Signal()
# One gate rejected, and with it the change. Also: role, rejected_by (username), comment.
gate_rejected = Signal()
# The change's deployment was created. Also: deployment_id.
change_deploying = Signal()
# A start the change asked for (when approved, at its time) did not happen because the
# deployer may no longer deploy there. Also: deployer (username), trigger (why it would
# have started).
change_start_refused = Signal()


def send_after_commit(signal: Signal, **kwargs) -> None:
    """Send ``signal`` after the current transaction commits; a failing listener is
    logged, never raised to whoever made the change."""
    from approvals.models import ChangeRequest

    def send() -> None:
        for receiver, result in signal.send_robust(sender=ChangeRequest, **kwargs):
            if isinstance(result, Exception):
                logger.error("listener %r failed on change %s: %r", receiver,
                             kwargs.get("change_id"), result, exc_info=result)

    transaction.on_commit(send)
