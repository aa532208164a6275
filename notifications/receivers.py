"""Where notifications hear about events, without the other apps naming this one."""

from __future__ import annotations

from django.db.models.signals import post_save
from django.dispatch import receiver

from core.models import AuditEvent
from deployments.models import Deployment
from deployments.signals import deployment_finished


@receiver(post_save, sender=AuditEvent, dispatch_uid="notifications.audit_event")
def notify_on_audit_event(sender, instance, created, **kwargs):
    """The approval workflow's events, inside the transaction that records them: the
    messages are kept (or not) with the change itself, and sent after commit."""
    from notifications.services import AUDIT_ACTIONS, notifications_for_audit_event

    if created and instance.action in AUDIT_ACTIONS:
        notifications_for_audit_event(event=instance)


@receiver(deployment_finished, sender=Deployment, dispatch_uid="notifications.deployment")
def notify_on_deployment_finished(sender, deployment, status, **kwargs):
    from notifications.services import notifications_for_deployment

    notifications_for_deployment(deployment=deployment, status=status)
