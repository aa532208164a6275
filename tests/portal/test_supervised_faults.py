"""`make run` under faults: SIGKILL of the worker, beat, Redis and PostgreSQL while a
deployment runs. Each recovers with no human action, loses nothing committed and
applies no step twice; the time to recover is printed (bench/fault_bench.py runs
more rounds and docs/reliability.md has the figures)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from testkit.faults import ROOT, Portal, drill, wait_until

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def portal():
    # Under the suite's own var dir: pytest's temporary folders are pruned by other
    # test runs on the same machine while the servers live there.
    import shutil
    from pathlib import Path

    root = Path(os.environ["PORTAL_VAR_DIR"]) / "supervised"
    shutil.rmtree(root, ignore_errors=True)
    # A Redis killed stays down for three seconds before its restart: long enough to
    # watch a request being accepted while it is away.
    p = Portal(root, step_delay=0.8, first_delay=3.0)
    p.start()
    yield p
    code = p.stop()
    assert code == 0, p.output()[-3000:]
    assert "stopped; nothing left running" in p.output()


def test_make_run_is_durable_and_ready(portal):
    assert portal.sql("SHOW fsync") == [("on",)]
    assert portal.sql("SHOW synchronous_commit") == [("on",)]
    status, body = portal.ready()
    assert status == 200, body
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "postgres", "redis", "worker", "beat"}


def test_readyz_names_redis_when_it_is_killed_and_recovers(portal):
    os.kill(portal.pid_of("redis"), signal.SIGKILL)
    status, body = wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(portal.ready()), 5, interval=0.05,
        what="readyz 503")
    assert body["failing"][0] == "redis" and body["checks"]["redis"]["ok"] is False
    assert body["checks"]["postgres"]["ok"] is True
    # Liveness is the process only: still ok.
    import urllib.request

    assert urllib.request.urlopen(f"{portal.url}/healthz", timeout=3).status == 200
    wait_until(lambda: portal.ready()[0] == 200, 30, what="ready after Redis restart")
    assert "the Redis server is no longer running; restarting it in" in portal.output()


@pytest.mark.parametrize("kind", ["worker", "beat", "redis", "postgres"])
def test_sigkill_mid_deployment_recovers_without_losing_or_repeating_anything(portal, kind):
    result = drill(portal, kind, f"{kind}-1")
    print("fault round:", json.dumps(result.__dict__))
    assert result.problems == []
    assert result.status == "succeeded"
    assert result.ready_after < 30
    assert result.finished_after < 45
    name = {"postgres": "PostgreSQL server", "redis": "Redis server"}.get(kind, kind)
    assert f"the {name} was killed by SIGKILL" in portal.output() or (
        f"the {name} is no longer running" in portal.output())


def test_a_deploy_request_during_a_redis_outage_runs_once_redis_is_back(portal):
    # Django's start-up takes longer than the outage, so the request waits in a shell
    # that is already up and is told when Redis is gone.
    #
    # The supervisor brings the killed Redis back after three seconds; on a busy machine
    # the request could take longer than that, and find Redis back (no outage seen, or
    # its publish retried into the returned Redis). So the requesting process is given
    # an address where no Redis listens: the outage lasts, for the request, as long as
    # the request does, while the portal's own Redis is killed and comes back as before.
    flag = portal.root / "go"
    flag.unlink(missing_ok=True)
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nothing_listens = probe.getsockname()[1]
    env = dict(portal.shell_env(), REDIS_URL=f"redis://127.0.0.1:{nothing_listens}/0")
    code = f"""
import pathlib, time, redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from django.contrib.auth import get_user_model
from django.db import transaction
from deployments import services
from catalog.models import Application, Environment, Release
user = get_user_model().objects.get(username="oncall")
app = Application.objects.get(slug="drill")
release, _ = Release.objects.get_or_create(application=app, version="outage-1",
                                           defaults=dict(created_by=user))
env = Environment.objects.get(slug="production")
print("WAITING", flush=True)
while not pathlib.Path({str(flag)!r}).exists():
    time.sleep(0.02)
try:
    redis.Redis(port={nothing_listens}, socket_connect_timeout=0.5,
                retry=Retry(NoBackoff(), 0)).ping()
    print("REDIS UP")
except Exception:
    print("REDIS DOWN")
with transaction.atomic():
    d = services.deployment_create(actor=user, release=release, environment=env)
print("DEPLOYMENT", d.pk)
"""
    shell = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", code],
                             cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "WAITING" not in shell.stdout.readline():  # the shell's Django start-up
        assert shell.poll() is None, shell.stderr.read()[-2000:]
    def deaths_noticed() -> int:
        return sum("the Redis server" in line and "restarting it in" in line
                   for line in portal.output().splitlines())

    noticed = deaths_noticed()
    os.kill(portal.pid_of("redis"), signal.SIGKILL)
    # The supervisor has seen it die (however long that took on a busy machine).
    wait_until(lambda: deaths_noticed() > noticed, 30, interval=0.05, what="Redis down")
    flag.write_text("go")
    out, err = shell.communicate(timeout=60)
    assert shell.returncode == 0, err[-2000:]
    assert "REDIS DOWN" in out
    deployment = int(out.split("DEPLOYMENT", 1)[1].split()[0])
    # Accepted durably: the row is committed while Redis is away.
    assert portal.status(deployment) in ("queued", "running", "succeeded")
    wait_until(lambda: portal.ready()[0] == 200, 30, what="Redis back")
    back = time.monotonic()
    wait_until(lambda: portal.status(deployment) != "queued", 30, interval=0.2,
               what="started within 30 s of Redis' return")
    started_after = time.monotonic() - back
    print(f"queued during the outage, started {started_after:.1f} s after Redis returned")
    wait_until(lambda: portal.status(deployment) == "succeeded", 60, what="succeeded")
    # Sent again at least once (more while a busy machine kept it waiting); run once.
    [(requeued,)] = portal.sql("SELECT count(*) FROM portal_auditevent WHERE action = "
                               "'deployment.requeued' AND object_id = %s", [str(deployment)])
    assert requeued >= 1
    assert portal.sql("SELECT count(*) FROM portal_auditevent WHERE action = "
                      "'deployment.started' AND object_id = %s", [str(deployment)]) == [(1,)]
