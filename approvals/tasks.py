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


@shared_task(ignore_result=True)
def cab_meetings_plan() -> None:
    """Every few minutes: plan the next meeting of each active CAB schedule and send
    its agenda to the board once, agenda_lead_hours before it (docs/cab.md)."""
    services.meetings_plan()
    services.meetings_send_agendas()


@shared_task(ignore_result=True)
def policies_activate_due() -> None:
    """Every minute: an approved policy version whose time has come becomes active
    (docs/policies.md); decisions also do so when they read the policy."""
    services.active_version()
