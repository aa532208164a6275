"""The supervisor's give-up rule, heartbeats on the dashboard, and the browser script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from core import liveness
from portal.supervisor import GiveUp, ProcessComponent, Supervisor

ROOT = Path(__file__).resolve().parents[2]


def test_a_process_that_keeps_dying_is_restarted_then_stops_everything_in_one_line():
    said: list[str] = []
    crashing = ProcessComponent("worker", [sys.executable, "-c", "import sys; sys.exit(3)"],
                                dict(os.environ))
    steady = ProcessComponent("web server", [sys.executable, "-c", "import time; "
                                             "time.sleep(60)"], dict(os.environ))
    supervisor = Supervisor([crashing, steady], say=said.append, max_failures=3, window=30,
                            first_delay=0.05, max_delay=0.2)
    supervisor.start_all()
    try:
        with pytest.raises(GiveUp) as stopped:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                supervisor.check()
                time.sleep(0.02)
        assert str(stopped.value) == ("the worker exited with code 3; it failed 3 times in "
                                      "30 s, stopping everything")
        # Each restart was logged, and the steady process was never touched.
        assert sum("restarting it in" in line for line in said) == 2
        assert supervisor.restarts("worker") == 2
        assert steady.alive() and supervisor.restarts("web server") == 0
    finally:
        for component in (crashing, steady):
            component.stop()
            component.wait_stopped(time.monotonic() + 5)


def test_a_killed_worker_takes_its_orphaned_children_with_it():
    import psutil

    parent = ProcessComponent("worker", [sys.executable, "-c", (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "time.sleep(60)")], dict(os.environ))
    supervisor = Supervisor([parent], say=lambda line: None, first_delay=30)
    supervisor.start_all()
    try:
        proc = psutil.Process(parent.pid)
        child = None
        deadline = time.monotonic() + 10
        while child is None and time.monotonic() < deadline:
            child = (proc.children() or [None])[0]
            time.sleep(0.05)
        os.kill(parent.pid, 9)
        parent.proc.wait(5)
        supervisor.check()
        child.wait(5)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.stop()


@pytest.mark.django_db
def test_the_dashboard_says_when_no_worker_runs(client, demo, settings):
    from deployments.models import Deployment
    from tests.api.helpers import finished_deployment

    # A Redis database of its own: no heartbeat from the suite's worker lands there.
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/7"
    store = redis.Redis.from_url(settings.REDIS_URL)
    store.flushdb()
    queued = finished_deployment()
    Deployment.objects.filter(pk=queued.pk).update(status="queued", finished_at=None)
    client.force_login(demo.engineer)

    page = client.get("/").content.decode()
    assert "1 deployment waits; no worker is running" in page

    liveness.beat_worker("worker@here")
    liveness.beat_scheduler()
    assert 'id="background-banner"' not in client.get("/").content.decode()

    # A heartbeat older than the liveness window counts as gone.
    liveness.beat_worker("worker@here", now=time.time() - settings.PORTAL_LIVENESS_SECONDS - 1)
    page = client.get("/").content.decode()
    assert "no worker is running" in page
    store.flushdb()


def test_the_test_command_uses_a_system_chromium(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    result = subprocess.run([str(ROOT / "scripts" / "ensure-browser")], capture_output=True,
                            text=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == str(fake)
