"""Celery tasks: ids in, a service call, nothing else (STYLE 8).

Each task's body runs inside ``logcontext.bind``: what it logs carries the deployment's
id (docs/observability.md, "Logs")."""

import logging

from celery import shared_task

from core import logcontext
from deployments import services

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deployment_execute(deployment_id: int) -> None:
    with logcontext.bind(deployment_id=deployment_id):
        logger.info("deployment %s: run starts", deployment_id)
        services.deployment_run(deployment_id=deployment_id)
        logger.info("deployment %s: run returns", deployment_id)


@shared_task(ignore_result=True)
def deployments_resume_stale(on_worker_start: bool = False) -> None:
    services.deployments_resume_stale(on_worker_start=on_worker_start)
