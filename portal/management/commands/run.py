"""`make run`: embedded servers, migrations, demo data, web, worker and beat in one terminal.

Ctrl-C stops everything it started, leaving no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

import demo_fleet
from catalog.models import Environment
from demo import history as demo_history
from demo.management.commands.seed_demo import DEFAULT_PASSWORD, USERS
from deployments.services import deploy_queue
from portal import embedded, supervisor


class Command(BaseCommand):
    help = "Run the portal: web server, Celery worker and beat, on the embedded servers."
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("PORTAL_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORTAL_PORT", 8000)))
        parser.add_argument("--password", default=os.environ.get("PORTAL_DEMO_PASSWORD",
                                                                 DEFAULT_PASSWORD))

    def handle(self, *args, host: str, port: int, password: str, **options):
        lock = embedded.RunLock()
        children: list[supervisor.ProcessComponent] = []
        history_maker = None
        services = None
        try:
            lock.acquire()
            services = embedded.Services()
            low, high = embedded.fleet_port_range()
            clashes = [f"{what} port {number}" for what, number in
                       (("the web server's", port), ("PostgreSQL's", embedded.pg_port()),
                        ("Redis'", embedded.redis_port())) if low <= number <= high]
            if clashes:
                # The demo fleet's ports are the loopback ports webhooks may reach.
                raise embedded.ServiceError(
                    f"{clashes[0]} is inside the demo fleet's ports {low}-{high}; "
                    "choose another or set PORTAL_DEMO_FLEET_PORTS")
            if _port_taken(host, port):
                raise embedded.ServiceError(
                    f"port {port} on {host} is in use by another program; "
                    "use PORTAL_PORT=8001 make run")
            self._say("starting PostgreSQL and Redis under "
                      f"{embedded.var_dir()}" if services.postgres or services.redis
                      else "using DATABASE_URL and REDIS_URL")
            services.start(reuse=True)
            # Servers left over from an interrupted run are ours to stop too.
            for server in (services.postgres, services.redis):
                if server is not None and server not in services.started:
                    services.started.append(server)
            from django.db import connections
            connections.close_all()
            call_command("migrate", interactive=False, verbosity=0)
            # The key that signs audit checkpoints: made under var/ (mode 0600) on first start.
            from audit.checkpoints import signing_key

            self._say(f"audit checkpoints are signed with key {signing_key().key_id}")
            first_run = not get_user_model().objects.exists()
            # First run: six months of demo history too, made in the background once
            # the web server is up (PORTAL_DEMO_HISTORY=false leaves it out).
            history = first_run and os.environ.get(
                "PORTAL_DEMO_HISTORY", "true").lower() not in ("0", "false", "no")
            if first_run:
                self._say("first run: loading demo data")
                call_command("seed_demo", password=password, verbosity=0,
                             dated_for_history=history)
            connections.close_all()

            fleet_record = embedded.var_dir() / "demo-fleet.json"
            resumed = demo_fleet.resume_all(fleet_record)
            if resumed:
                self._say(f"restarted {resumed} demo service(s) where they ran before")

            python = sys.executable
            bin_dir = os.path.dirname(python)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            log_level = os.environ.get("PORTAL_LOG_LEVEL", "WARNING").upper()
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                # Celery warns at length when run as root; one line here says it instead.
                env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser"
            # DEBUG off, plain HTTP on loopback, outbound calls to loopback only to the
            # demo fleet's ports (manage.py set these already; embedded explains each).
            for name, value in embedded.one_machine_environment().items():
                env.setdefault(name, value)
            # The developer run's one worker holds every environment's credentials: it
            # consumes every deployment queue (deploy.<environment>), new ones included.
            env.setdefault("PORTAL_WORKER_ALL_ENVIRONMENTS", "true")
            queues = ",".join(["celery"] + [deploy_queue(slug) for slug in
                                            Environment.objects.values_list("slug", flat=True)])
            commands = {
                "web server": [os.path.join(bin_dir, "gunicorn"), "portal.wsgi:application",
                               # Workers and threads: gunicorn.conf.py (WEB_CONCURRENCY,
                               # PORTAL_WEB_THREADS).
                               "--bind", f"{host}:{port}",
                               "--access-logfile", "-", "--log-level", "warning",
                               "--graceful-timeout", "5"],
                # Quiet by default: the banner above stays readable, each deployment's
                # progress is on its page; PORTAL_LOG_LEVEL=INFO shows every task.
                "worker": [os.path.join(bin_dir, "celery"), "-A", "portal", "--quiet",
                           "worker", "--loglevel", log_level, "--concurrency", "2",
                           "--hostname", "worker@%h", "-Q", queues,
                           # One worker: nothing to gossip with, and both break on a
                           # Redis restart where the worker itself reconnects.
                           "--without-gossip", "--without-mingle"],
                "beat": [os.path.join(bin_dir, "celery"), "-A", "portal", "--quiet", "beat",
                         "--loglevel", log_level,
                         "--schedule", str(embedded.var_dir() / "celerybeat-schedule")],
            }
            servers = [supervisor.ServerComponent(name, server) for name, server in
                       (("PostgreSQL server", services.postgres),
                        ("Redis server", services.redis)) if server is not None]
            children = [supervisor.ProcessComponent(name, argv, env)
                        for name, argv in commands.items()]
            # While the history is made in the past, beat's deadlines and meeting plans
            # would judge its changes by today's clock: beat starts once it is made.
            held = [c for c in children if history and c.name == "beat"]
            watch = supervisor.Supervisor(
                [c for c in servers + children if c not in held], say=self._say,
                max_failures=int(os.environ.get("PORTAL_SUPERVISOR_MAX_FAILURES", 5)),
                window=float(os.environ.get("PORTAL_SUPERVISOR_WINDOW_SECONDS", 60)),
                first_delay=float(os.environ.get("PORTAL_SUPERVISOR_FIRST_DELAY_SECONDS", 1)))
            for child in children:
                if child not in held:
                    child.start()
            _wait_for_port(host, port, 30)
            self._banner(host, port, password if first_run else None)
            if history:
                history_maker = demo_history.start_in_background(password=password, env=env)
                self._say("making six months of demo history in the background "
                          f"({embedded.var_dir() / 'demo-history.log'}); pages say when "
                          "it is done")
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                # SIGINT too: a shell that starts us in the background ignores it.
                signal.signal(signum, _raise_interrupt)
            while True:
                try:
                    watch.check()
                except supervisor.GiveUp as exc:
                    raise CommandError(str(exc)) from None
                if history_maker is not None and history_maker.poll() is not None:
                    self._say("demo history is ready" if history_maker.returncode == 0 else
                              "making the demo history failed; see var/demo-history.log")
                    history_maker = None
                    while held:
                        watch.add(held.pop())
                time.sleep(0.5)
        except KeyboardInterrupt:
            self._say("stopping…")
        except embedded.ServiceError as exc:
            raise CommandError(str(exc)) from None
        finally:
            if history_maker is not None and history_maker.poll() is None:
                # Interrupted like Ctrl-C: its transaction rolls back and it disconnects
                # before the servers stop.
                history_maker.send_signal(signal.SIGINT)
                try:
                    history_maker.wait(15)
                except subprocess.TimeoutExpired:
                    history_maker.kill()
                    history_maker.wait(5)
                demo_history.marker().unlink(missing_ok=True)
            _stop_children(children)
            # The demo application's sample services stop with the portal and come
            # back with it on the next start.
            demo_fleet.suspend_all(settings.PORTAL_DEPLOY_ROOT,
                                   embedded.var_dir() / "demo-fleet.json")
            if services is not None:
                services.stop()
            lock.release()
        self._say("stopped; nothing left running")

    def _say(self, text: str) -> None:
        self.stdout.write(f"portal: {text}")
        self.stdout.flush()

    def _banner(self, host: str, port: int, password: str | None) -> None:
        url = f"http://{host}:{port}/"
        users = ", ".join([u for u, _ in USERS] + ["admin"])
        lines = [
            "",
            f"  The portal is running at {url}",
            f"  API docs: {url}api/docs/",
            f"  Demo logins: {users}",
            f"  Password for each: {password}" if password else
            "  Password: the one set on first run (default "
            f"{DEFAULT_PASSWORD}, or PORTAL_DEMO_PASSWORD)",
            # Second factors (SOP 10.2): Production people are enrolled in TOTP.
            "  Second factor (TOTP) of techlead, cab, cab2, security, business, oncall, "
            f"admin: add {settings.PORTAL_DEMO_TOTP_SECRET} to an authenticator app",
            "  Press Ctrl-C to stop the web server, worker, beat, PostgreSQL and Redis.",
            "",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_taken(host, port):
            return
        time.sleep(0.2)
    raise CommandError(f"the web server did not start listening on {host}:{port}")


def _stop_children(children: list[supervisor.ProcessComponent]) -> None:
    for child in children:
        child.stop()
    deadline = time.monotonic() + 15
    for child in children:
        child.wait_stopped(deadline)
