"""Fault test: SIGKILL the worker process in the middle of a step, 20 times.

The report (printed, and written to $PORTAL_VAR_DIR/fault-report.json) gives the
deployments lost, the steps whose effect ran twice, and the time from each kill
until the interrupted step was running again. The first two must be 0.
"""

import json
import os
import random
import signal
import statistics
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from deployments.models import Deployment, DeploymentStep
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

KILLS = int(os.environ.get("PORTAL_FAULT_KILLS", "20"))
KILLS_PER_DEPLOYMENT = 4


def _pool_child(worker) -> psutil.Process:
    return wait_for(lambda: (psutil.Process(worker.pid).children() or [None])[0], timeout=30)


def _running_step(deployment_id):
    return (DeploymentStep.objects.filter(deployment_id=deployment_id, status="running")
            .exclude(attempts__gte=2).first())


def test_sigkill_in_the_middle_of_steps_loses_nothing_and_runs_nothing_twice(
        fleet, celery_worker_process):
    rng = random.Random(7)
    shop = fleet(targets=2, step_delay=0.3)
    deployments, recoveries = [], []
    kills = 0
    version = 0
    while kills < KILLS:
        version += 1
        deployment = shop.start(f"1.{version}.0")
        deployments.append(deployment)
        aimed = 0
        while aimed < KILLS_PER_DEPLOYMENT:
            if kills >= KILLS:
                break
            step = wait_for(lambda d=deployment: _running_step(d.pk)
                            or Deployment.objects.get(pk=d.pk).is_final, timeout=60)
            if step is True:
                break
            aimed += 1
            time.sleep(rng.uniform(0.02, 0.15))  # somewhere inside the step (0.3 s long)
            if not DeploymentStep.objects.filter(pk=step.pk, status="running",
                                                 attempts=step.attempts).exists():
                continue  # it finished meanwhile: aim at the next one
            child = _pool_child(celery_worker_process)
            killed_at = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
            # Recovered when the interrupted step is claimed again (or finished).
            wait_for(lambda s=step: DeploymentStep.objects.filter(
                pk=s.pk).exclude(attempts=s.attempts, status="running").exists()
                or DeploymentStep.objects.filter(pk=s.pk, attempts__gt=s.attempts).exists(),
                timeout=60, interval=0.05)
            recoveries.append(time.monotonic() - killed_at)
        shop.wait(deployment, timeout=120)

    finished = {d.pk: Deployment.objects.get(pk=d.pk) for d in deployments}
    lost = [pk for pk, d in finished.items() if d.status != "succeeded"]
    applied = Counter()
    for line in (shop.base / "journal" / "applied.log").read_text().splitlines():
        _, step_id, _ = line.split()
        applied[int(step_id)] += 1
    twice = [step_id for step_id, n in applied.items() if n > 1]
    steps = DeploymentStep.objects.filter(deployment__in=deployments)
    never = [s.pk for s in steps if s.name != "analysis" and applied[s.pk] != 1]
    report = {
        "kills": kills,
        "deployments": len(deployments),
        "deployments_lost": len(lost),
        "steps_run_twice": len(twice),
        "steps_not_applied_exactly_once": len(never),
        "steps_resumed": steps.filter(attempts__gt=1).count(),
        "recovery_seconds": {"median": round(statistics.median(recoveries), 2),
                             "max": round(max(recoveries), 2)},
    }
    print("fault report:", json.dumps(report))
    if os.environ.get("PORTAL_FAULT_DEBUG"):
        for d in deployments[:1]:
            for line in d.log_lines.order_by("seq"):
                print(line.at.strftime("%H:%M:%S.%f"), line.message)
    Path(os.environ["PORTAL_VAR_DIR"], "fault-report.json").write_text(json.dumps(report))

    assert kills == KILLS
    assert lost == [], {pk: finished[pk].failure_reason for pk in lost}
    assert twice == []
    assert never == []
    # Each kill landed inside a step (re-checked just before it), which ran again.
    assert report["steps_resumed"] >= KILLS - 2
    assert shop.served_versions() == {t.name: f"1.{version}.0" for t in shop.targets}
