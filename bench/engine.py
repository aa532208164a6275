"""What the engine benchmarks share: their own database on the embedded servers, their
own workers, applications on the `command` executor with steps of a known duration.

Run with the ENV of the embedded servers to use (PORTAL_VAR_DIR, PORTAL_PG_PORT,
PORTAL_REDIS_PORT); each benchmark uses a fresh database of its own there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Benchmarks measure the engine, not the disk: as the test suite does.
os.environ.setdefault("PORTAL_DURABLE", "false")
ENVIRONMENT = "bench"


def setup(database: str) -> None:
    """Start the embedded servers if needed, a fresh database, migrations, Django."""
    from portal import embedded

    # On the embedded servers: a key of this machine's own, as manage.py uses.
    os.environ.setdefault("DJANGO_SECRET_KEY", embedded.local_secret_key())
    if embedded.uses_embedded_database():
        embedded.Services().start(reuse=True)
        import psycopg

        base = embedded.embedded_database_url()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
        os.environ["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + database
    if embedded.uses_embedded_redis():
        os.environ.setdefault("REDIS_URL", embedded.embedded_redis_url())
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def make_applications(count: int, *, commands: dict, prefix: str = "svc"):
    """``count`` applications on the command executor, one target each in the bench
    environment, and the user who deploys."""
    from django.contrib.auth import get_user_model

    from catalog.models import Application, Environment, Target

    user, _ = get_user_model().objects.get_or_create(username="bench")
    env, _ = Environment.objects.get_or_create(slug=ENVIRONMENT,
                                               defaults={"name": "Bench", "order": 99})
    apps = []
    for i in range(count):
        app = Application.objects.create(slug=f"{prefix}-{i:02d}", name=f"{prefix} {i}",
                                         executor="command",
                                         executor_settings={"commands": commands})
        Target.objects.create(application=app, environment=env, name="node-1")
        apps.append(app)
    return user, env, apps


def start_worker(*, concurrency: int, name: str, include: str = "") -> subprocess.Popen:
    """A real worker on the bench database consuming the default and the bench queues."""
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               DATABASE_URL=(f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
                             f"{db['PORT']}/{db['NAME']}"),
               REDIS_URL=settings.REDIS_URL)
    log = Path(settings.BASE_DIR if hasattr(settings, "BASE_DIR") else ROOT) / "var"
    log.mkdir(exist_ok=True)
    log_path = log / f"bench-worker-{name}.log"
    argv = [str(Path(sys.executable).with_name("celery")), "-A", "portal", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip", "--hostname", f"{name}@%h",
            "-Q", f"celery,deploy.{ENVIRONMENT}"]
    if include:
        argv += ["--include", include]
    proc = subprocess.Popen(argv, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    from portal.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_path.read_text()[-2000:]}")
        replies = app.control.ping(destination=[f"{name}@{os.uname().nodename}"], timeout=0.5)
        if replies:
            return proc
    stop_worker(proc)
    raise RuntimeError("worker did not answer in 60 s")


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def deploy(user, env, app, version: str):
    """Register a release and create its deployment in one committed transaction."""
    from django.db import transaction

    from catalog.models import Release
    from deployments import services

    release = Release.objects.create(application=app, version=version, created_by=user)
    with transaction.atomic():
        return services.deployment_create(actor=user, release=release, environment=env)
