"""Fixtures shared by the whole suite: real PostgreSQL and Redis, the demo cast."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from portal import embedded

PASSWORD = "test-pass-123"


@pytest.fixture(scope="session")
def embedded_services():
    """The embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL point elsewhere)."""
    services = embedded.Services()
    services.start(reuse=True)
    yield services
    services.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_demo_fleet_at_the_end(tmp_path_factory):
    """Deployments of the demo application start sample services; none outlives the run."""
    yield
    from pathlib import Path

    from django.conf import settings

    import demo_fleet

    demo_fleet.stop_all(Path(settings.PORTAL_DEPLOY_ROOT))
    demo_fleet.stop_all(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def django_db_setup(embedded_services, django_db_setup):
    """pytest-django's test database, created on the embedded server."""
    yield


@pytest.fixture
def demo(db):
    """Environments, policies, groups and one user per role (DESIGN.md section 9)."""
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    return Cast()


class Cast:
    """The fixed cast: a requester, an approver per gate, on-call, auditor, an outsider."""

    def __getattr__(self, username: str):
        User = get_user_model()
        if username == "ci":
            return User.objects.get(username="ci-bot")
        if username == "outsider":
            user, _ = User.objects.get_or_create(username="outsider")
            return user
        return User.objects.get(username=username)


@pytest.fixture
def api():
    """An API client factory: api(user) authenticates with a freshly issued bearer token.

    Issued as ``manage.py issue_token`` issues it (no second-factor check of its own);
    for someone who holds a second factor (the demo's Production people) the token is
    then marked as its owner just stepped up through it, as ``POST /api/v1/auth/step-up``
    with a TOTP code does (tested for real in tests/security/
    test_tokens_act_for_their_owner.py), so it may decide in Production for
    ``PORTAL_STEP_UP_SECONDS`` (docs/identity.md)."""
    from audit.trail import System
    from identity.services import api_token_issue

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            token, raw = api_token_issue(actor=System("test"), user=user,
                                         name=f"t{user.pk}-{get_user_model().objects.count()}"
                                         f"-{id(client)}")
            stepped_up(token)
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


def stepped_up(token):
    """Record on ``token`` a TOTP check of its owner made now, if the owner holds a
    second factor: what a successful ``POST /api/v1/auth/step-up`` leaves behind."""
    from django.utils import timezone

    from identity.assurance import has_second_factor
    from identity.models import ApiToken

    if has_second_factor(token.user):
        ApiToken.objects.filter(pk=token.pk).update(second_factor="totp",
                                                    second_factor_at=timezone.now())
    return token


def totp_code(secret: str | None = None, *, step: int = 0) -> str:
    """The code an authenticator app shows now (``step`` periods later) for ``secret``
    (default: the demo's, which seed_demo enrols Production people with)."""
    import time

    import pyotp
    from django.conf import settings

    totp = pyotp.TOTP(secret or settings.PORTAL_DEMO_TOTP_SECRET)
    return totp.at(time.time() + step * totp.interval)


def sign_in_with_second_factor(client, user, *, secret: str | None = None):
    """Sign ``client`` in as ``user`` and step up with a real TOTP check through
    django-allauth's second-factor page, as a person does before a Production decision.

    A code is accepted once (allauth remembers used codes for a period), so the next
    period's code is tried if this one was used already in the test.
    """
    from django.urls import reverse

    client.force_login(user)
    url = reverse("mfa_reauthenticate")
    for step in (0, 1, -1):
        response = client.post(url, {"code": totp_code(secret, step=step)})
        if response.status_code == 302:
            return client
    raise AssertionError(f"the second-factor check refused {user}: "
                         f"{response.status_code} {response.content[:300]!r}")


def pytest_configure(config):
    from django.conf import settings

    # Hashing ten demo passwords with the production hasher costs two seconds a test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # A TOTP code of the next or last period is accepted too (as clocks drift), so a
    # test can step up one person twice within a period: each code is accepted once.
    settings.MFA_TOTP_TOLERANCE = 1


_WORKER = {"running": False}

# Variables the worker holds besides the test run's own (which win): the portal's key and
# two secrets, which the security tests look for in what deployed commands see and log.
WORKER_TEST_ENV = {
    "DJANGO_SECRET_KEY": "portal-key-held-by-the-worker-5Xq9",
    "STAGING_SECRET_PROBE_API_TOKEN": "tok-in-namespace-8Hw3Lr",
    "SHARED_PAYMENTS_API_TOKEN": "tok-shared-payments-2Kd7Pz",
}


# The default queue and the demo environments' deployment queues (deploy.<slug>); tests
# of routing start workers of their own for other environments (start_celery_worker).
WORKER_QUEUES = "celery,deploy.development,deploy.staging,deploy.production"


def _quiesce_worker(timeout: float = 10.0) -> None:
    """Drop queued tasks and wait for the worker's running ones to finish.

    A transactional test ends by emptying every table; a task the worker is still
    running against them (a notification queued on commit, say) would deadlock with
    that. Tasks in progress sit in kombu's ``unacked`` hash until acknowledged.
    """
    import time

    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("celery")
    # Deployments wait in their environment's queue (deploy.<slug>).
    for key in client.scan_iter(f"{settings.PORTAL_DEPLOY_QUEUE_PREFIX}*"):
        client.delete(key)
    deadline = time.monotonic() + timeout
    while client.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def _django_db_helper(_django_db_helper):
    """pytest-django's database fixture, with the worker quiet before tables are emptied."""
    yield _django_db_helper
    if _WORKER["running"]:
        _quiesce_worker()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """A real Celery worker on the embedded Redis, reading and writing the test database."""
    import os

    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    proc, _ = start_celery_worker(queues=WORKER_QUEUES, name="test", extra_env={
        "PORTAL_HEARTBEAT_STALE_SECONDS": os.environ.get("PORTAL_HEARTBEAT_STALE_SECONDS",
                                                         "120")})
    _WORKER["running"] = True
    yield proc
    _WORKER["running"] = False
    stop_celery_worker(proc)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    """Poll until ``predicate()`` is truthy; return its value or fail with a message."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def waiting_for_a_lock() -> int:
    """How many backends of the test database are waiting for a lock (a row, an advisory
    lock) right now: the condition a race test waits on, instead of sleeping, to know
    that the other transaction has reached the lock it must wait for."""
    from django.db import connection

    with connection.cursor() as cursor:
        # Inside a transaction the activity view is a snapshot taken once: take a new one.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def worker_finished(task_id: str, worker: str = "test") -> bool:
    """Whether the real worker ``worker`` (start_celery_worker's ``name``) has run the
    task ``task_id`` to its end: Celery logs "Task name[id] succeeded in ..." then."""
    import os
    from pathlib import Path

    log = Path(os.environ["PORTAL_VAR_DIR"]) / f"test-worker-{worker}.log"
    return log.exists() and f"[{task_id}] succeeded" in log.read_text(errors="replace")


# --- Signed audit checkpoints: each test has its own witness file and public-key file,
# since its database starts empty; the signing key is made once for the session.
_AUDIT_RUN = {"count": 0}


@pytest.fixture(scope="session")
def _audit_key_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audit-keys")


@pytest.fixture(autouse=True)
def _audit_witness_of_this_test(settings, _audit_key_dir):
    _AUDIT_RUN["count"] += 1
    here = _audit_key_dir / f"test-{_AUDIT_RUN['count']}"
    settings.PORTAL_AUDIT_SIGNING_KEY_FILE = _audit_key_dir / "signing-key"
    settings.PORTAL_AUDIT_PUBLIC_KEYS_FILE = here / "public-keys.jsonl"
    settings.PORTAL_AUDIT_WITNESS_FILES = [str(here / "checkpoints.jsonl")]
    settings.PORTAL_AUDIT_WITNESS_WEBHOOKS = []
    settings.PORTAL_AUDIT_WITNESS_EMAIL = "off"
    return here


# --- browser tests (tests/e2e, tests/identity) -------------------------------------------


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (Playwright's sync API allows one per thread)."""
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/ensure-browser "
                    "(make test does) or apt-get install chromium")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    playwright.stop()


def start_celery_worker(*, queues: str, name: str, concurrency: int = 1, extra_env=None):
    """Start one more real worker on the test database and Redis, consuming ``queues``;
    returns (process, log path). Stop it with stop_celery_worker."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    database_url = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}"
                    f"/{db['NAME']}")
    env = dict({**WORKER_TEST_ENV, **os.environ}, DATABASE_URL=database_url,
               REDIS_URL=settings.REDIS_URL, PORTAL_HEARTBEAT_STALE_SECONDS="120")
    env.update(extra_env or {})
    log_path = Path(os.environ["PORTAL_VAR_DIR"]) / f"test-worker-{name}.log"
    log = open(log_path, "w")
    celery = str(Path(sys.executable).with_name("celery"))
    proc = subprocess.Popen(
        [celery, "-A", "portal", "worker", "--pool", "prefork", "--concurrency",
         str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip",
         "--hostname", f"{name}-{os.getpid()}@%h", "-Q", queues],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_celery_worker(proc)
            raise RuntimeError(f"celery worker {name} did not start: "
                               f"{log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, log_path


def stop_celery_worker(proc) -> None:
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
