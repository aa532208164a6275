"""Resume rules without a worker: the deployments here are never queued (the test
transaction never commits), so no worker can pick them up while the rules are checked."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from deployments import services
from deployments.models import Deployment, DeploymentStep
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


def test_beat_leaves_alone_a_deployment_whose_run_is_alive(fleet, demo):
    shop = fleet(targets=1)
    # A bare running row under an id no earlier test's deployment (perhaps still winding
    # down on the shared worker) has held, so the lock below is the only one on it.
    started = shop.start("1.0.0")
    Deployment.objects.filter(pk=started.pk).update(status="cancelled")
    deployment = Deployment.objects.create(
        id=2_000_000_000 + started.pk, application=shop.app, environment=shop.environment,
        release=started.release, status="running", task_id="t",
        heartbeat_at=timezone.now() - timedelta(minutes=10))
    # Another session holds the run lock, as a live worker in a long step does.
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)",
                           [services.RUN_LOCK_CLASS, deployment.pk])
        assert services.run_is_live(deployment.pk)
        assert services.deployments_resume_stale() == 0
    finally:
        other.close()
    # The server lets go of the lock once it has seen the other session end.
    wait_for(lambda: not services.run_is_live(deployment.pk), timeout=10)
    assert connection.connection is not None


def test_a_step_interrupted_too_often_fails_the_deployment_with_the_reason(fleet, demo):
    shop = fleet(targets=1)
    deployment = shop.start("1.0.0")
    step = deployment.steps.order_by("position").first()
    DeploymentStep.objects.filter(pk=step.pk).update(
        status="running", attempts=services.STEP_MAX_ATTEMPTS)
    Deployment.objects.filter(pk=deployment.pk).update(status="running")

    assert services.deployment_run(deployment_id=deployment.pk) == "failed"

    deployment.refresh_from_db()
    assert "was interrupted 3 times" in deployment.failure_reason
