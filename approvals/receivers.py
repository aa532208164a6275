"""Hears from the deployments app when a deployment ends (DESIGN.md section 3)."""

from django.dispatch import receiver

from deployments.models import Deployment
from deployments.signals import deployment_finished


@receiver(deployment_finished, sender=Deployment, dispatch_uid="approvals.close_change")
def close_change_on_deployment_finished(sender, deployment, status, **kwargs):
    from approvals.services import change_request_deployment_finished

    change_request_deployment_finished(deployment=deployment, status=status)
