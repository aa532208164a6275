"""Fault drills against a real `manage.py run`: kill one of its processes mid-deployment.

Used by tests/portal/test_supervised_faults.py (a few rounds) and bench/fault_bench.py
(more rounds). A drill starts the portal in its own var dir and ports, makes an
application whose steps take ``step_delay`` seconds, starts a deployment, waits
until it has finished at least one step, snapshots what is committed, SIGKILLs the
chosen process and measures how long until the portal is ready again and the
deployment has finished, then checks that nothing committed was lost and that no
step's effect was applied twice.

Does not import Django: it talks to the portal's PostgreSQL with psycopg and runs
``manage.py shell`` for what needs the services.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
APP = "drill"
ENVIRONMENT = "production"
KINDS = ("worker", "beat", "redis", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - servers come and go during a drill
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")


class Portal:
    """`manage.py run` in its own folder and ports, durable, with fast liveness settings."""

    def __init__(self, root: Path, *, step_delay: float = 1.0, first_delay: float = 1.0) -> None:
        self.root = root
        self.web_port, self.pg_port, self.redis_port = free_port(), free_port(), free_port()
        self.step_delay = step_delay
        # As `make run` starts from a developer's shell: none of what the test run set
        # for itself (DEBUG, its loopback allow-list, ...) reaches it.
        from portal.embedded import ONE_MACHINE_VARIABLES

        inherited = {"DATABASE_URL", "REDIS_URL", "PORTAL_DURABLE", "PORTAL_VAR_DIR",
                     *ONE_MACHINE_VARIABLES}
        env = {k: v for k, v in os.environ.items() if k not in inherited}
        env.update(
            PORTAL_VAR_DIR=str(root), PORTAL_PG_PORT=str(self.pg_port),
            PORTAL_REDIS_PORT=str(self.redis_port), PORTAL_DEPLOY_ROOT=str(root / "deploy"),
            PORTAL_DEMO_PASSWORD="drill-pass-123", PORTAL_DURABLE="true",
            PORTAL_HEARTBEAT_INTERVAL_SECONDS="1", PORTAL_LIVENESS_SECONDS="4",
            PORTAL_RESUME_SWEEP_SECONDS="2", PORTAL_HEARTBEAT_STALE_SECONDS="4",
            PORTAL_REQUEUE_AFTER_SECONDS="3",
            # The demo history commits without waiting for its WAL flush (a crash may drop
            # its last few events, by design); a drill counts only durable work.
            PORTAL_DEMO_HISTORY="false",
            PORTAL_SUPERVISOR_FIRST_DELAY_SECONDS=str(first_delay),
            PORTAL_SUPERVISOR_MAX_FAILURES="8",
        )
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "run.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 150) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run", "--port", str(self.web_port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None or self.ready()[0] == 200, timeout,
                   interval=0.5, what="portal ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"manage.py run exited: {self.output()[-3000:]}")
        self.shell(f"""
from catalog.models import Application, Environment, Target
app, _ = Application.objects.get_or_create(slug={APP!r}, defaults=dict(
    name={APP!r}, executor="local", executor_settings={{"step_delay": {self.step_delay}}}))
env = Environment.objects.get(slug={ENVIRONMENT!r})
for i in (1, 2):
    Target.objects.get_or_create(application=app, environment=env, name=f"web-{{i}}",
                                 defaults=dict(address="127.0.0.1"))
""")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    # --- reading and acting ---------------------------------------------------

    def sql(self, query: str, params=()) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.pg_port, user="portal",
                             dbname="portal", connect_timeout=2, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def shell_env(self) -> dict:
        """The environment of a `manage.py` command on this portal's servers."""
        return dict(self.env,
                    DATABASE_URL=f"postgres://portal@127.0.0.1:{self.pg_port}/portal",
                    REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                    DJANGO_SECRET_KEY=(self.root / "secret-key").read_text().strip())

    def shell(self, code: str, timeout: float = 60) -> str:
        env = self.shell_env()
        result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
                                cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"manage.py shell failed: {result.stderr[-3000:]}")
        return result.stdout

    def deploy(self, version: str) -> int:
        out = self.shell(f"""
from django.contrib.auth import get_user_model
from django.db import transaction
from deployments import services
from catalog.models import Application, Environment, Release
user = get_user_model().objects.get(username="oncall")
app = Application.objects.get(slug={APP!r})
release, _ = Release.objects.get_or_create(application=app, version={version!r},
                                           defaults=dict(created_by=user))
with transaction.atomic():
    d = services.deployment_create(actor=user, release=release,
                                   environment=Environment.objects.get(slug={ENVIRONMENT!r}))
print("DEPLOYMENT", d.pk)
""")
        return int(out.split("DEPLOYMENT", 1)[1].split()[0])

    def ready(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=3) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        except (OSError, ValueError):
            return 0, {}

    def pid_of(self, kind: str) -> int:
        if kind == "postgres":
            return int((self.root / "pgdata" / "postmaster.pid").read_text().split()[0])
        if kind == "redis":
            return int((self.root / "redis" / "redis.pid").read_text().strip())
        word = {"worker": "worker", "beat": "beat"}[kind]
        for child in psutil.Process(self.proc.pid).children():
            cmd = child.cmdline()
            if any(part.endswith("celery") for part in cmd[:2]) and word in cmd:
                return child.pid
        raise LookupError(kind)

    def status(self, deployment_id: int) -> str:
        return self.sql("SELECT status FROM deployments_deployment WHERE id = %s",
                        [deployment_id])[0][0]

    def applied(self) -> Counter:
        log = self.root / "deploy" / APP / ENVIRONMENT / "journal" / "applied.log"
        counts: Counter = Counter()
        if log.exists():
            for line in log.read_text().splitlines():
                counts[int(line.split()[1])] += 1
        return counts


@dataclass
class Round:
    kind: str
    deployment: int
    status: str = ""
    ready_after: float = 0.0
    finished_after: float = 0.0
    problems: list[str] = field(default_factory=list)


def drill(portal: Portal, kind: str, version: str, timeout: float = 60) -> Round:
    """One round: deploy, kill ``kind`` after the first finished step, check the outcome."""
    deployment = portal.deploy(version)
    result = Round(kind=kind, deployment=deployment)
    wait_until(lambda: portal.sql(
        "SELECT count(*) FROM deployments_deploymentstep WHERE deployment_id = %s "
        "AND status = 'succeeded'", [deployment])[0][0] >= 1
        and portal.sql("SELECT count(*) FROM deployments_deploymentstep WHERE "
                       "deployment_id = %s AND status = 'running'", [deployment])[0][0] == 1,
        timeout=30, interval=0.05, what="a step running after a finished one")
    steps_done = dict(portal.sql(
        "SELECT id, finished_at FROM deployments_deploymentstep WHERE deployment_id = %s "
        "AND status = 'succeeded'", [deployment]))
    lines = {r[0] for r in portal.sql(
        "SELECT id FROM deployments_deploymentlogline WHERE deployment_id = %s", [deployment])}
    events = {r[0] for r in portal.sql("SELECT id FROM portal_auditevent")}
    pid = portal.pid_of(kind)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # Ready again: the killed process was replaced and every check passes.
    wait_until(lambda: portal.pid_of(kind) != pid, timeout, interval=0.1,
               what=f"{kind} restarted")
    wait_until(lambda: portal.ready()[0] == 200, timeout, interval=0.2, what="ready again")
    result.ready_after = time.monotonic() - killed_at
    wait_until(lambda: portal.status(deployment) in ("succeeded", "failed", "cancelled",
                                                      "rolled_back", "needs_attention"),
               timeout, interval=0.1, what="deployment finished")
    result.finished_after = time.monotonic() - killed_at
    result.status = portal.status(deployment)
    if result.status != "succeeded":
        reason = portal.sql("SELECT failure_reason FROM deployments_deployment WHERE id = %s",
                            [deployment])[0][0]
        result.problems.append(f"deployment {result.status}: {reason}")
    after = dict(portal.sql(
        "SELECT id, finished_at FROM deployments_deploymentstep WHERE deployment_id = %s "
        "AND status = 'succeeded'", [deployment]))
    lost_steps = [s for s, at in steps_done.items() if after.get(s) != at]
    if lost_steps:
        result.problems.append(f"finished steps lost or run again: {lost_steps}")
    now_lines = {r[0] for r in portal.sql(
        "SELECT id FROM deployments_deploymentlogline WHERE deployment_id = %s", [deployment])}
    if lines - now_lines:
        result.problems.append(f"log lines lost: {sorted(lines - now_lines)}")
    now_events = {r[0] for r in portal.sql("SELECT id FROM portal_auditevent")}
    if events - now_events:
        result.problems.append(f"audit events lost: {sorted(events - now_events)}")
    step_ids = [r[0] for r in portal.sql(
        "SELECT id FROM deployments_deploymentstep WHERE deployment_id = %s "
        "AND name <> 'analysis'", [deployment])]
    applied = portal.applied()
    twice = [s for s in step_ids if applied[s] > 1]
    if twice:
        result.problems.append(f"steps applied twice: {twice}")
    if result.status == "succeeded":
        missing = [s for s in step_ids if applied[s] != 1]
        if missing:
            result.problems.append(f"steps not applied: {missing}")
    return result
