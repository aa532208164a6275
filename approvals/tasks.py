"""Celery tasks of the approval workflow: ids in, a service call, nothing else."""

from celery import shared_task

from approvals import services


@shared_task(ignore_result=True)
def changes_start_scheduled() -> None:
    services.changes_start_scheduled()


@shared_task(ignore_result=True)
def changes_close_finished() -> None:
    services.changes_close_finished()


@shared_task(ignore_result=True)
def approvals_enforce_deadlines() -> None:
    """Every minute: expire gates, lapse approvals and warn before both
    (docs/cab.md)."""
    services.deadlines_enforce()
