"""Cancel while running; the beat resumes deployments whose worker died."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Refused
from deployments import services
from deployments.models import Deployment, DeploymentStep
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_cancel_while_running_stops_before_the_next_step(fleet, celery_worker_process):
    shop = fleet(targets=3, step_delay=0.3)
    deployment = shop.start("1.0.0", "rolling")
    wait_for(lambda: DeploymentStep.objects.filter(deployment=deployment,
                                                   status="succeeded").count() >= 2)
    with pytest.raises(Refused):
        services.deployment_cancel(actor=shop.demo.business, deployment=deployment)

    services.deployment_cancel(actor=shop.demo.oncall, deployment=deployment,
                               reason="wrong window")

    wait_for(lambda: not DeploymentStep.objects.filter(deployment=deployment,
                                                       status="running").exists(), timeout=30)
    deployment = shop.wait(deployment)
    assert deployment.status == "cancelled"
    assert deployment.steps.filter(status="pending").exists()
    # The worker writes the line right after the status it set (a commit earlier).
    wait_for(lambda: deployment.log_lines.filter(message__startswith="Cancelled").exists(),
             timeout=10)
    # The run stopped: once the worker has let go of it (its run lock), nothing can
    # move any more, and nothing moved after the cancel.
    done = deployment.steps.filter(status="succeeded").count()
    wait_for(lambda: not services.run_is_live(deployment.pk), timeout=30)
    assert deployment.steps.filter(status="succeeded").count() == done
    assert not deployment.steps.filter(status="running").exists()


def test_beat_resumes_a_deployment_whose_worker_died_mid_step(
        fleet, celery_worker_process, settings):
    shop = fleet(targets=2)
    shop.deploy("1.0.0")
    # A deployment whose worker died in the middle of its deploy step: claimed,
    # running, heartbeat long gone, no live run holding it.
    release = shop.release("1.1.0")
    deployment = shop.start(release)
    wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_final, timeout=60)
    shop.deploy("1.2.0")
    dead = shop.start("1.3.0")
    # The worker may already be at it: wait until it finishes, then rewind it into a
    # "died mid-step" state.
    shop.wait(dead)
    # The worker lets go of the run (its lock) just after the deployment ends.
    wait_for(lambda: not services.run_is_live(dead.pk), timeout=30)
    steps = list(dead.steps.order_by("position"))
    half = len(steps) // 2
    DeploymentStep.objects.filter(pk__in=[s.pk for s in steps[half:]]).update(
        status="pending", attempts=0, finished_at=None)
    DeploymentStep.objects.filter(pk=steps[half].pk).update(status="running", attempts=1)
    Deployment.objects.filter(pk=dead.pk).update(
        status="running", finished_at=None, attempts=1,
        heartbeat_at=timezone.now() - timedelta(minutes=10))
    (shop.base / "journal" / f"{dead.task_id}-{steps[half].pk}.done").unlink(missing_ok=True)

    assert services.deployments_resume_stale() == 1

    dead = shop.wait(dead)
    assert dead.status == "succeeded"
    resumed = DeploymentStep.objects.get(pk=steps[half].pk)
    assert resumed.status == "succeeded" and resumed.attempts == 2
    assert dead.log_lines.filter(message__contains="interrupted by a stopped worker").exists()
