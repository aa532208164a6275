"""Where notifications hear about events, without the other apps naming this one.

Every event here is sent inside the transaction that made it: the messages it calls
for are written there, as outbox rows (``Notification``), and commit or roll back with
the decision; their sending is queued for after commit. Each listener writes in a
savepoint of its own and never raises: a message that cannot be written is logged and
the decision stands."""

from __future__ import annotations

import logging
from functools import wraps

from django.db import transaction
from django.dispatch import receiver

from approvals import signals as approval_signals
from deployments.models import Deployment
from deployments.signals import deployment_ending

logger = logging.getLogger(__name__)


def _outbox(write):
    @wraps(write)
    def listener(sender, **event):
        try:
            with transaction.atomic():
                write(**event)
        except Exception:
            logger.exception("notifications for %s (%s) not written", write.__name__,
                             event.get("change_id") or event.get("deployment"))
    return listener


@receiver(approval_signals.change_submitted, dispatch_uid="notifications.change_submitted")
@_outbox
def notify_on_change_submitted(**event):
    from notifications.services import notifications_for_change_submitted

    notifications_for_change_submitted(**event)


@receiver(approval_signals.gate_approved, dispatch_uid="notifications.gate_approved")
@_outbox
def notify_on_gate_approved(**event):
    from notifications.services import notifications_for_gate_approved

    notifications_for_gate_approved(**event)


@receiver(approval_signals.gate_rejected, dispatch_uid="notifications.gate_rejected")
@_outbox
def notify_on_gate_rejected(**event):
    from notifications.services import notifications_for_gate_rejected

    notifications_for_gate_rejected(**event)


@receiver(approval_signals.change_deploying, dispatch_uid="notifications.change_deploying")
@_outbox
def notify_on_change_deploying(**event):
    from notifications.services import notifications_for_change_deploying

    notifications_for_change_deploying(**event)


@receiver(approval_signals.change_start_refused,
          dispatch_uid="notifications.change_start_refused")
@_outbox
def notify_on_change_start_refused(**event):
    from notifications.services import notifications_for_change_start_refused

    notifications_for_change_start_refused(**event)


@receiver(approval_signals.approval_reopened, dispatch_uid="notifications.approval_reopened")
@_outbox
def notify_on_approval_reopened(**event):
    from notifications.services import notifications_for_approval_reopened

    notifications_for_approval_reopened(**event)


@receiver(approval_signals.change_deadline_near,
          dispatch_uid="notifications.change_deadline_near")
@_outbox
def notify_on_change_deadline_near(**event):
    from notifications.services import notifications_for_deadline_near

    notifications_for_deadline_near(**event)


@receiver(approval_signals.change_gates_expired,
          dispatch_uid="notifications.change_gates_expired")
@_outbox
def notify_on_change_gates_expired(**event):
    from notifications.services import notifications_for_gates_expired

    notifications_for_gates_expired(**event)


@receiver(approval_signals.change_approvals_lapsed,
          dispatch_uid="notifications.change_approvals_lapsed")
@_outbox
def notify_on_change_approvals_lapsed(**event):
    from notifications.services import notifications_for_approvals_lapsed

    notifications_for_approvals_lapsed(**event)


# In the transaction that ends the deployment, beside the change closing with it.
@receiver(deployment_ending, sender=Deployment, dispatch_uid="notifications.deployment")
@_outbox
def notify_on_deployment_ending(deployment, status, **kwargs):
    from notifications.services import notifications_for_deployment

    notifications_for_deployment(deployment=deployment, status=status)


@receiver(approval_signals.cab_agenda_ready, dispatch_uid="notifications.cab_agenda_ready")
@_outbox
def notify_on_cab_agenda_ready(**event):
    from notifications.services import notifications_for_cab_agenda

    notifications_for_cab_agenda(**event)
