"""The floor a deployment's dispatch is measured against: a bare Celery task that does
the same row claim (lock the deployment, mark its first step running) on the same
PostgreSQL and Redis, in the same worker. Loaded by bench/dispatch_bench.py's worker
(`--include bench.dispatch_floor`); not part of the portal."""

from celery import shared_task
from django.db import transaction
from django.utils import timezone


@shared_task(ignore_result=True)
def floor_claim(deployment_id: int) -> None:
    from deployments.models import Deployment, DeploymentStep

    with transaction.atomic():
        Deployment.objects.select_for_update().get(pk=deployment_id)
        Deployment.objects.filter(pk=deployment_id).update(status="running",
                                                           started_at=timezone.now())
        DeploymentStep.objects.filter(deployment_id=deployment_id, position=1).update(
            status="running", started_at=timezone.now())
