"""Where notifications hear about events, without the other apps naming this one.

Every event here is sent after the transaction that made it commits."""

from __future__ import annotations

from django.dispatch import receiver

from approvals import signals as approval_signals
from deployments.models import Deployment
from deployments.signals import deployment_finished


@receiver(approval_signals.change_submitted, dispatch_uid="notifications.change_submitted")
def notify_on_change_submitted(sender, **event):
    from notifications.services import notifications_for_change_submitted

    notifications_for_change_submitted(**event)


@receiver(approval_signals.gate_approved, dispatch_uid="notifications.gate_approved")
def notify_on_gate_approved(sender, **event):
    from notifications.services import notifications_for_gate_approved

    notifications_for_gate_approved(**event)


@receiver(approval_signals.gate_rejected, dispatch_uid="notifications.gate_rejected")
def notify_on_gate_rejected(sender, **event):
    from notifications.services import notifications_for_gate_rejected

    notifications_for_gate_rejected(**event)


@receiver(approval_signals.change_deploying, dispatch_uid="notifications.change_deploying")
def notify_on_change_deploying(sender, **event):
    from notifications.services import notifications_for_change_deploying

    notifications_for_change_deploying(**event)


@receiver(approval_signals.change_start_refused,
          dispatch_uid="notifications.change_start_refused")
def notify_on_change_start_refused(sender, **event):
    from notifications.services import notifications_for_change_start_refused

    notifications_for_change_start_refused(**event)


@receiver(deployment_finished, sender=Deployment, dispatch_uid="notifications.deployment")
def notify_on_deployment_finished(sender, deployment, status, **kwargs):
    from notifications.services import notifications_for_deployment

    notifications_for_deployment(deployment=deployment, status=status)
