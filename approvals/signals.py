"""Domain events of the approval workflow.

Each is sent inside the transaction that made it (``send_in_transaction``), after the
decision is written: a listener writes what must commit with the decision and nothing
else (the notifications app writes its outbox rows, and queues their sending for after
commit). A decision rolled back takes what its listeners wrote with it, so it sends
nothing; a process that dies after the commit leaves the rows for the outbox's sweep.
A listener that fails is confined to its savepoint and logged: the decision stands.
The sender is ``ChangeRequest``; every event carries ``change_id`` and ``at`` (when it
happened).
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
# A standing approval stopped counting because what it approved changed (an edit of the
# change, its configuration or what deployments run). Also: approval_id, role,
# approver_id, changed (the parts of the fingerprint that moved).
approval_reopened = Signal()
# Deadlines (docs/cab.md). A deadline is near: deadline ("approve_by" or
# "start_by"), due (when), roles (the gates still to decide, for approve_by).
change_deadline_near = Signal()
# Pending gates not decided by their approve-by time closed; the change back to draft.
# Also: roles, expires_at.
change_gates_expired = Signal()
# CAB meetings (docs/cab.md): a meeting's agenda is ready for its members, the
# schedule's agenda_lead_hours before it. meeting_id (no change_id: it is a meeting's).
cab_agenda_ready = Signal()
# An approved change not started by its start-by time lost its approvals. Also:
# execute_by, approver_ids (whose approvals were withdrawn).
change_approvals_lapsed = Signal()


def send_in_transaction(signal: Signal, **kwargs) -> None:
    """Send ``signal`` now, inside the caller's transaction (the decision's), in a
    savepoint: what listeners write commits or rolls back with the decision. A failing
    listener is logged and its writes undone; it never undoes the decision."""
    from approvals.models import ChangeRequest

    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("domain events are sent inside the transaction that made them")
    try:
        with transaction.atomic():
            failed = [(receiver, result) for receiver, result in
                      signal.send_robust(sender=ChangeRequest, **kwargs)
                      if isinstance(result, Exception)]
            for receiver, result in failed:
                logger.error("listener %r failed on change %s: %r", receiver,
                             kwargs.get("change_id"), result, exc_info=result)
            if failed:
                raise _ListenerFailed
    except _ListenerFailed:
        pass


class _ListenerFailed(Exception):
    """Rolls the listeners' savepoint back."""


def send_after_commit(signal: Signal, **kwargs) -> None:
    """Send ``signal`` after the current transaction commits, for listeners that must
    not run inside it; a failing listener is logged, never raised to whoever made the
    change. Messages do not go this way: see ``send_in_transaction``."""
    from approvals.models import ChangeRequest

    def send() -> None:
        for receiver, result in signal.send_robust(sender=ChangeRequest, **kwargs):
            if isinstance(result, Exception):
                logger.error("listener %r failed on change %s: %r", receiver,
                             kwargs.get("change_id"), result, exc_info=result)

    transaction.on_commit(send)
