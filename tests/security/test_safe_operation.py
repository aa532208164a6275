"""Safe operation of the one-machine run (`make run`, docs/security.md section 19).

`manage.py run` keeps DEBUG off (no debug page, no list of URL patterns on a 404); its
outbound allow-list names the demo fleet's loopback ports and nothing else, so a webhook
cannot reach PostgreSQL, Redis or the portal itself, and a refused destination reads
the same whether anything listens there; its worker reconnects in place after Redis
is killed; `/readyz` says so when PostgreSQL refuses new connections; and the system
account PostgreSQL runs as under root is made once, at install, under a lock.

The process tests run a real `manage.py run` (testkit.faults.Portal) started as
from a developer's shell: nothing the test run sets for itself (DEBUG, its own loopback
allow-list) reaches it.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

import demo_fleet
from audit.models import AuditEvent
from core import outbound
from core.errors import Invalid
from notifications import services as notification_services
from notifications.models import Notification, Subscription
from portal import embedded
from testkit.faults import ROOT, Portal, wait_until
from tests.factories import request_change

# --- helpers ------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    def log_message(self, *args):
        return

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST  # noqa: N815


def _listener(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Hook)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _fleet_listener(ports: str) -> ThreadingHTTPServer:
    """A receiver on the first free port of the demo fleet's range."""
    low, _, high = ports.partition("-")
    for port in range(int(low), int(high) + 1):
        try:
            return _listener(port)
        except OSError:
            continue
    pytest.skip(f"every port of {ports} is taken on this machine")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode(errors="replace"), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def _child(run_pid: int, word: str) -> psutil.Process:
    for child in psutil.Process(run_pid).children():
        if any(word in part for part in child.cmdline()[:3]):
            return child
    raise LookupError(word)


# --- a real `manage.py run` ---------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    root = Path(os.environ["PORTAL_VAR_DIR"]) / "safe-operation"
    shutil.rmtree(root, ignore_errors=True)
    portal = Portal(root, step_delay=0.5, first_delay=2.0)
    portal.start()
    yield portal
    code = portal.stop()
    assert code == 0, portal.output()[-3000:]


@pytest.fixture(scope="module")
def web_env(run) -> dict:
    """The environment `manage.py run` gave its web server."""
    return psutil.Process(_child(run.proc.pid, "gunicorn").pid).environ()


def test_make_run_keeps_debug_off_and_a_404_names_no_url_patterns(run, web_env):
    assert web_env["DJANGO_DEBUG"] == "false"
    # The settings the web server computes from that environment.
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps([s.DEBUG, s.MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN, "
            "s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE]))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT,
                            env=dict(web_env, DJANGO_SETTINGS_MODULE="portal.settings"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    debug, insecure_origin, ssl_redirect, secure_cookie = json.loads(
        result.stdout.strip().splitlines()[-1])
    assert debug is False
    # Passkeys still work on http://127.0.0.1, on their own setting; plain HTTP works.
    assert insecure_origin is True
    assert (ssl_redirect, secure_cookie) == (False, False)

    status, page, _ = _get(f"{run.url}/no-such-page/{secrets.token_hex(4)}")
    assert status == 404
    for leak in ("URLconf", "URL patterns", "urlpatterns", "api/v1/", "admin/",
                 "DEBUG = True", "Traceback"):
        assert leak not in page, leak
    status, _, _ = _get(f"{run.url}/api/v1/no-such-thing")
    assert status == 404
    # Static files are still served (WhiteNoise, from the apps' folders).
    status, css, headers = _get(f"{run.url}/static/portal/portal.css")
    assert status == 200 and len(css) > 100
    assert headers.get("Content-Type", "").startswith("text/css")
    # The sign-in page works over plain HTTP, its cookie not secure-only.
    status, login, headers = _get(f"{run.url}/login/")
    assert status == 200 and "password" in login.lower()


def test_make_run_lets_webhooks_reach_the_demo_fleet_and_nothing_else_on_loopback(
        run, web_env, settings):
    worker_env = psutil.Process(run.pid_of("worker")).environ()
    allow = worker_env["PORTAL_OUTBOUND_ALLOW"]
    assert allow == web_env["PORTAL_OUTBOUND_ALLOW"] == (
        f"127.0.0.1:{worker_env['PORTAL_DEMO_FLEET_PORTS']}")
    settings.PORTAL_OUTBOUND_ALLOW = allow.split(",")

    fleet = _fleet_listener(worker_env["PORTAL_DEMO_FLEET_PORTS"])
    try:
        answer = outbound.request("POST", f"http://127.0.0.1:{fleet.server_port}/hook",
                                  body=b"{}")
        assert answer.status == 204 and fleet.seen == ["/hook"]
    finally:
        fleet.shutdown()
        fleet.server_close()

    # PostgreSQL, Redis and the portal itself: all listening, all refused before any
    # connection, with the same words.
    reasons = set()
    for port in (run.pg_port, run.redis_port, run.web_port):
        with pytest.raises(outbound.DestinationRefused) as refused:
            outbound.request("POST", f"http://127.0.0.1:{port}/", body=b"PING\r\n",
                             connect_timeout=1, read_timeout=1)
        reasons.add(str(refused.value))
    assert reasons == {"127.0.0.1 may not be called: 127.0.0.1 is a loopback address"}


def test_readyz_is_unavailable_while_postgresql_refuses_new_connections(run):
    assert run.ready()[0] == 200
    # Existing connections (the web server's own among them) stay up; new ones are
    # refused, as when max_connections is reached.
    import psycopg

    def alter(allow: bool) -> None:
        with psycopg.connect(host="127.0.0.1", port=run.pg_port, user="portal",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE portal ALLOW_CONNECTIONS {str(allow).lower()}")

    alter(False)
    try:
        status, body = wait_until(
            lambda: (lambda r: r if r[0] == 503 else None)(run.ready()), 10,
            interval=0.1, what="readyz 503")
        assert body["failing"] == ["postgres"]
        assert body["checks"]["postgres"]["ok"] is False
        assert body["checks"]["redis"]["ok"] is True
    finally:
        alter(True)
    wait_until(lambda: run.ready()[0] == 200, 30, what="ready again")


def test_the_worker_reconnects_in_place_when_redis_is_killed(run):
    worker = run.pid_of("worker")

    def kill_redis_and_wait():
        os.kill(run.pid_of("redis"), signal.SIGKILL)
        wait_until(lambda: run.ready()[0] == 503, 10, interval=0.05, what="Redis down")
        wait_until(lambda: run.ready()[0] == 200, 60, what="Redis back and the worker alive")

    # Killed while a deployment's step runs (a message delivered, not yet acknowledged),
    # then again while the worker waits for work: the two moments kombu's close of the
    # lost connection used to crash the worker.
    deployment = run.deploy("reconnect-1")
    wait_until(lambda: run.sql("SELECT count(*) FROM deployments_deploymentstep WHERE "
                               "deployment_id = %s AND status = 'running'",
                               [deployment])[0][0] == 1, 30, interval=0.05,
               what="a step running")
    kill_redis_and_wait()
    wait_until(lambda: run.status(deployment) == "succeeded", 60, what="first deployment")
    kill_redis_and_wait()
    # After Redis is back the same worker process takes the next task.
    deployment = run.deploy("reconnect-2")
    wait_until(lambda: run.status(deployment) == "succeeded", 60, what="second deployment")
    assert run.pid_of("worker") == worker
    output = run.output()
    assert "Unrecoverable error" not in output
    assert "the worker was" not in output and "the worker exited" not in output
    assert "the worker is no longer running" not in output


# --- the allow-list's host:port entries (in this process) --------------------------------


@pytest.fixture
def receivers():
    servers = [_listener(), _listener()]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_host_port_entry_allows_that_port_only_and_host_entries_still_allow_all(
        receivers, settings):
    allowed, other = receivers
    settings.PORTAL_OUTBOUND_ALLOW = [f"127.0.0.1:{allowed.server_port}"]
    assert outbound.request("GET", f"http://127.0.0.1:{allowed.server_port}/a").status == 204
    with pytest.raises(outbound.DestinationRefused, match="loopback"):
        outbound.request("GET", f"http://127.0.0.1:{other.server_port}/b")
    assert other.seen == []
    # A range, and a host name with a port.
    low, high = sorted((allowed.server_port, other.server_port))
    settings.PORTAL_OUTBOUND_ALLOW = [f"127.0.0.1:{low}-{high}"]
    assert outbound.request("GET", f"http://127.0.0.1:{other.server_port}/c").status == 204
    settings.PORTAL_OUTBOUND_ALLOW = [f"localhost:{allowed.server_port}"]
    assert outbound.request("GET", f"http://localhost:{allowed.server_port}/d").status == 204
    with pytest.raises(outbound.DestinationRefused):
        outbound.request("GET", f"http://localhost:{other.server_port}/e")
    # Host-only entries keep allowing every port.
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    assert outbound.request("GET", f"http://127.0.0.1:{other.server_port}/f").status == 204
    assert other.seen == ["/c", "/f"]
    # A port on a metadata address still needs that very address named.
    settings.PORTAL_OUTBOUND_ALLOW = ["169.254.0.0/16:80"]
    with pytest.raises(outbound.DestinationRefused, match="metadata"):
        outbound.check_url("http://169.254.169.254:80/", resolve=False)


def _demo_allow_list() -> list[str]:
    ports = embedded.DEMO_FLEET_PORTS
    return [f"127.0.0.1:{ports}"]


@pytest.mark.django_db
def test_a_refused_webhook_reads_the_same_on_the_change_page_whether_the_port_is_open(
        demo, client, settings):
    settings.PORTAL_OUTBOUND_ALLOW = _demo_allow_list()
    change = request_change(demo.engineer)
    # The suite's own Redis and PostgreSQL listen; the third port has nothing on it.
    ports = [embedded.redis_port(), embedded.pg_port(), _closed_port()]
    notifications = [Notification.objects.create(
        kind="post_deployment", channel="webhook", recipient=f"http://127.0.0.1:{port}/x",
        event_key=f"test:scan:{port}", subject="Deployed", body="text", change_id=change.pk)
        for port in ports]
    for notification in notifications:
        assert notification_services.notification_send(
            notification_id=notification.pk) == "failed"
    errors = {n.last_error for n in Notification.objects.filter(change_id=change.pk,
                                                                event_key__startswith="test:")}
    assert errors == {"destination refused: 127.0.0.1 may not be called: 127.0.0.1 is a "
                      "loopback address"}
    assert AuditEvent.objects.filter(action="notification.failed").count() >= len(ports)
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{change.pk}/").content.decode()
    assert page.count("127.0.0.1 may not be called: 127.0.0.1 is a loopback address") == len(
        ports)


@pytest.mark.django_db
def test_a_webhook_subscription_to_redis_or_postgresql_is_refused_under_the_demo_allow_list(
        demo, settings):
    from catalog.models import Environment

    settings.PORTAL_OUTBOUND_ALLOW = _demo_allow_list()
    production = Environment.objects.get(slug="production")
    for port in (embedded.redis_port(), embedded.pg_port(), 8000):
        with pytest.raises(Invalid) as refused:
            notification_services.subscription_create(
                actor=demo.oncall, channel="webhook", target=f"http://127.0.0.1:{port}/",
                environment=production)
        assert refused.value.code == "destination_refused"
    assert not Subscription.objects.exists()
    low = int(embedded.DEMO_FLEET_PORTS.split("-")[0])
    notification_services.subscription_create(
        actor=demo.oncall, channel="webhook", target=f"http://127.0.0.1:{low + 5}/hook",
        environment=production)
    assert Subscription.objects.count() == 1


def test_the_demo_fleet_listens_only_inside_its_ports(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTAL_DEMO_FLEET_PORTS", embedded.DEMO_FLEET_PORTS)
    release = tmp_path / "release"
    release.mkdir()
    (release / "VERSION").write_text("9.9.9\n")
    info = demo_fleet.start_instance(tmp_path / "slot", release, "app-1")
    try:
        low, high = embedded.fleet_port_range()
        assert low <= int(info["port"]) <= high
        status, body, _ = _get(f"http://127.0.0.1:{info['port']}/health")
        assert status == 200 and json.loads(body)["version"] == "9.9.9"
    finally:
        demo_fleet.stop_instance(tmp_path / "slot")


# --- the PostgreSQL system account: made at install, once, under a lock -------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the account is made only as root")


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@as_root
def test_concurrent_installs_make_the_postgresql_account_once(tmp_path):
    name = f"portal-pg-t{secrets.token_hex(3)}"
    env = dict(os.environ, PORTAL_PG_SYSTEM_USER=name)
    try:
        installs = [subprocess.Popen([str(ROOT / "scripts" / "pg-system-account")], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(4)]
        outputs = [p.communicate(timeout=120) for p in installs]
        assert [p.returncode for p in installs] == [0, 0, 0, 0], outputs
        made = [out for out, _ in outputs if f"created the system account {name}" in out]
        assert len(made) == 1
        assert _account_exists(name)
        # Run again: nothing to do, nothing said.
        again = subprocess.run([str(ROOT / "scripts" / "pg-system-account")], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout == ""
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@as_root
def test_starting_postgresql_never_creates_the_account_and_says_how_in_one_line(
        tmp_path, monkeypatch):
    name = f"portal-pg-t{secrets.token_hex(3)}"
    monkeypatch.setenv("PORTAL_PG_SYSTEM_USER", name)
    server = embedded.Postgres(tmp_path, _closed_port())
    with pytest.raises(embedded.ServiceError) as refused:
        server.start()
    assert "make install" in str(refused.value) and name in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not _account_exists(name)
    assert not (server.data_dir / "PG_VERSION").exists()


def test_make_install_and_make_test_make_the_account_first():
    makefile = (ROOT / "Makefile").read_text()
    targets = {line.split(":", 1)[0]: line.split(":", 1)[1]
               for line in makefile.splitlines()
               if line and not line.startswith(("\t", "#", " ", ".")) and ":" in line
               and "=" not in line.split(":", 1)[0]}
    for target in ("install", "test", "run"):
        assert "pg-account" in targets[target].split(), target
    assert "scripts/pg-system-account" in makefile
    # Nothing creates it when a server starts.
    assert "useradd" not in (ROOT / "portal" / "embedded.py").read_text()
