"""`make run` (manage.py run): serves the portal, makes the demo history before beat
starts, and Ctrl-C leaves no process behind."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_the_login_page_and_ctrl_c_stops_everything(tmp_path):
    web = free_port()
    # As from a developer's shell: none of what the test run set for itself (DEBUG, its
    # loopback allow-list) reaches it.
    from portal.embedded import ONE_MACHINE_VARIABLES

    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", *ONE_MACHINE_VARIABLES)}
    env.update(PORTAL_VAR_DIR=str(tmp_path), PORTAL_PG_PORT=str(free_port()),
               PORTAL_REDIS_PORT=str(free_port()), PORTAL_DEPLOY_ROOT=str(tmp_path / "deploy"),
               PORTAL_DEMO_PASSWORD="run-test-pass", PORTAL_DEMO_HISTORY_SIZE="small")
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "run", "--port", str(web)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{web}/login/", timeout=2).status
                break
            except OSError:
                time.sleep(0.5)
        output = (tmp_path / "run.log").read_text()
        assert status == 200, output[-3000:]
        assert f"The portal is running at http://127.0.0.1:{web}/" in output
        assert "Password for each: run-test-pass" in output
        assert "Demo logins: engineer, techlead, qa" in output

        def beats() -> list[psutil.Process]:
            return [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if "beat" in p.cmdline()]

        # The first run makes six months of history in the past; beat, which judges
        # deadlines by today's clock, waits until it is made.
        making = tmp_path / "demo-history.making"
        if making.exists():
            assert beats() == [], "beat started while the demo history was being made"
        deadline = time.monotonic() + 300
        while "demo history is ready" not in (tmp_path / "run.log").read_text():
            assert "making the demo history failed" not in (tmp_path / "run.log").read_text()
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while not beats():
            assert time.monotonic() < deadline, "beat did not start after the history"
            time.sleep(0.2)

        family = psutil.Process(proc.pid).children(recursive=True)
        servers = [int((tmp_path / "pgdata" / "postmaster.pid").read_text().split()[0]),
                   int((tmp_path / "redis" / "redis.pid").read_text().strip())]
        assert len(family) >= 3  # web, worker, beat (and their own children)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    # Everything it started ends: its children and both servers (waited for, since an
    # ended process may take a moment to be reaped).
    processes = list(family)
    for pid in servers:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=20)
    left = [(p.pid, p.cmdline(), p.status()) for p in alive
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert "stopped; nothing left running" in (tmp_path / "run.log").read_text()
