"""Writing and tampering with audit events in tests."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from approvals import services as approval_services
from audit.trail import System, audit_record
from core import clock
from deployments.models import Deployment, DeploymentLogLine, DeploymentStep
from tests.factories import request_change


def record(action: str = "thing.done", *, days_ago: float = 0, **fields):
    """Append one event through the real writer, optionally dated ``days_ago``."""
    when = timezone.now() - timedelta(days=days_ago)
    with clock.use(lambda: when), transaction.atomic():
        return audit_record(actor=System("test"), action=action, object_type="thing",
                            object_id=fields.pop("object_id", "1"),
                            object_repr=fields.pop("object_repr", "a thing"), **fields)


def sql(statement: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.rowcount


@contextmanager
def triggers_disabled(table: str = "portal_auditevent"):
    """Tamper as a database owner would: without the append-only trigger."""
    sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    try:
        yield
    finally:
        sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def approved_production_change(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy 1.0.0.")
    for user, role in ((demo.cab, "cab"), (demo.security, "security"),
                       (demo.business, "business")):
        approval_services.gate_approve(actor=user, change=change, role=role,
                                       comment=f"{role} ok")
    return change


def make_deployment(change, *, status="succeeded", steps=("backup", "health_check"),
                    step_status="succeeded", lines=2) -> Deployment:
    deployment = Deployment.objects.create(
        application=change.release.application, environment=change.environment,
        release=change.release, change_id=change.pk, status=status,
        started_by=change.requested_by, started_at=timezone.now(), finished_at=timezone.now())
    for position, name in enumerate(steps, start=1):
        DeploymentStep.objects.create(deployment=deployment, position=position, name=name,
                                      title=name.replace("_", " "), status=step_status,
                                      finished_at=timezone.now())
    for seq in range(lines):
        DeploymentLogLine.objects.create(deployment=deployment, seq=seq + 1,
                                         message=f"line {seq + 1} of #{deployment.pk}")
    return deployment
