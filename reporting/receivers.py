"""A production deployment that ends is followed by a signed audit checkpoint at once,
so the evidence of that deployment is witnessed without waiting for the minute beat;
and its day's DORA roll-up is recomputed in the transaction that ends it."""

from __future__ import annotations

import logging

from django.conf import settings
from django.dispatch import receiver

from deployments.models import Deployment
from deployments.signals import deployment_ending, deployment_finished

log = logging.getLogger(__name__)


@receiver(deployment_finished, dispatch_uid="reporting.audit_checkpoint_after_deployment")
def audit_checkpoint_after_deployment(sender, deployment, status, **kwargs) -> None:
    from audit.tasks import audit_checkpoint_sign

    slug = getattr(deployment.environment, "slug", "")
    if slug not in settings.PORTAL_AUDIT_CHECKPOINT_ENVIRONMENTS:
        return
    try:
        audit_checkpoint_sign.delay(reason=f"deployment {deployment.pk} {status}")
    except Exception as exc:  # noqa: BLE001 - the minute beat signs it anyway
        log.warning("audit checkpoint after deployment %s not queued: %s",
                    deployment.pk, exc.__class__.__name__)


@receiver(deployment_ending, sender=Deployment, dispatch_uid="reporting.deployment_rollups")
def keep_deployment_rollups(sender, deployment, status, **kwargs) -> None:
    """The daily roll-ups of the DORA figures change in the transaction that ends the
    deployment (docs/metrics.md, "Daily roll-ups")."""
    from reporting import rollups

    rollups.deployment_ended(deployment=deployment)
