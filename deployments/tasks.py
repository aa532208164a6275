"""Celery tasks: ids in, a service call, nothing else (STYLE 8)."""

from celery import shared_task

from deployments import services


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deployment_execute(deployment_id: int) -> None:
    services.deployment_run(deployment_id=deployment_id)


@shared_task(ignore_result=True)
def deployments_resume_stale(on_worker_start: bool = False) -> None:
    services.deployments_resume_stale(on_worker_start=on_worker_start)
