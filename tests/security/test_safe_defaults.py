"""Safe defaults: DEBUG off, no development key in production, sign-in lockout, error
answers without tracebacks, and 503 when PostgreSQL or Redis is down."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection, connections
from django.test import Client

from audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.security.error_urls import SECRET_IN_ERROR

BASE_DIR = Path(__file__).resolve().parents[2]
DEAD = {"DATABASE_URL": "postgres://u@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/0"}
LOCKED_MESSAGE = "Too many failed attempts, try again in 15 minutes."


def _manage(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DEAD, DJANGO_ALLOWED_HOSTS="portal.example.com", **env_vars)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


# --- DEBUG and the secret key ---------------------------------------------------------


def test_debug_is_off_when_nothing_turns_it_on():
    result = _manage("shell", "-c", "from django.conf import settings; print(settings.DEBUG)",
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_production_refuses_to_start_with_the_development_key():
    from django.conf import settings

    result = _manage("check", DJANGO_SECRET_KEY=settings.DEVELOPMENT_SECRET_KEY)
    assert result.returncode != 0, result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == ("django.core.exceptions.ImproperlyConfigured: DJANGO_SECRET_KEY is "
                         "the development key; set a random key of your own before starting "
                         "with DJANGO_DEBUG off")


def test_production_without_a_key_refuses_to_start():
    result = _manage("check")
    assert result.returncode != 0, result.stdout
    assert "Set the DJANGO_SECRET_KEY environment variable" in result.stderr


def test_commands_on_the_embedded_servers_use_a_machine_key_of_their_own():
    from django.conf import settings

    from portal import embedded

    # The suite's own embedded servers (and var dir): the command finds them running.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "REDIS_URL")}
    code = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"
    runs = [subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=BASE_DIR,
                           env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    debug, key = runs[0].stdout.strip().splitlines()[-1].split(" ", 1)
    assert debug == "False"
    assert key != settings.DEVELOPMENT_SECRET_KEY and len(key) >= 50
    assert runs[1].stdout.strip().splitlines()[-1] == f"False {key}"  # made once, kept
    key_file = embedded.var_dir() / "secret-key"
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o077 == 0


def test_production_refuses_to_start_with_an_empty_key():
    result = _manage("check", DJANGO_SECRET_KEY="  ")
    assert result.returncode != 0, result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith(
        "ImproperlyConfigured: DJANGO_SECRET_KEY is empty; set a random key")


# --- sign-in lockout --------------------------------------------------------------------


def _sign_in(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_six_failed_sign_ins_lock_that_user_out_from_that_address(demo, api):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for attempt in range(1, 7):
        response = _sign_in(attacker, "engineer", "wrong-guess")
        if attempt < 5:
            assert response.status_code == 200  # the form again, with its error
        else:  # the fifth failure locks; the sixth is refused unchecked
            assert response.status_code == 429
            assert LOCKED_MESSAGE in response.content.decode()

    # The right password does not help during the cool-off.
    response = _sign_in(attacker, "engineer", PASSWORD)
    assert response.status_code == 429
    assert LOCKED_MESSAGE in response.content.decode()
    assert not _signed_in(attacker)

    # On the record: every refusal, and the lockout once.
    assert AuditEvent.objects.filter(action="auth.login_failed",
                                     object_repr="engineer").count() == 7
    locked = AuditEvent.objects.get(action="auth.locked_out")
    assert locked.object_repr == "engineer"
    assert locked.after["ip"] == "203.0.113.7"
    assert "wrong-guess" not in str(locked.after) and PASSWORD not in str(locked.after)

    # Another user from the same address, and the same user from elsewhere, sign in.
    colleague = Client(REMOTE_ADDR="203.0.113.7")
    assert _sign_in(colleague, "qa", PASSWORD).status_code == 302
    assert _signed_in(colleague)
    at_desk = Client(REMOTE_ADDR="198.51.100.20")
    assert _sign_in(at_desk, "engineer", PASSWORD).status_code == 302
    assert _signed_in(at_desk)

    # API tokens are not sign-ins: the locked user's CI token keeps working.
    assert api(demo.engineer).get("/api/v1/changes/").status_code == 200


def test_a_successful_sign_in_clears_the_failure_count(demo):
    client = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(4):
        _sign_in(client, "qa", "wrong-guess")
    assert _sign_in(client, "qa", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        assert _sign_in(client, "qa", "wrong-guess").status_code == 200
    assert _sign_in(client, "qa", PASSWORD).status_code == 302
    assert not AuditEvent.objects.filter(action="auth.locked_out").exists()


# --- error answers ----------------------------------------------------------------------


def test_unknown_api_paths_answer_json_404(demo, api):
    client = api(demo.engineer)
    for path in ("/api/v1/no-such-thing/", "/api/no-such-version/", "/api/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/json"
        assert response.json()["code"] == "not_found"


def test_unknown_page_is_the_portals_404_page(demo):
    client = Client()
    client.force_login(demo.engineer)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


@pytest.mark.urls("tests.security.error_urls")
@pytest.mark.parametrize("debug", [False, True])
def test_a_crash_in_the_api_is_json_500_without_traceback(demo, api, settings, debug):
    settings.DEBUG = debug
    client = api(demo.engineer)
    client.raise_request_exception = False
    response = client.get("/api/v1/crash/")
    assert response.status_code == 500
    assert response.json() == {"code": "server_error", "detail": response.json()["detail"]}
    body = response.content.decode()
    assert "Traceback" not in body and SECRET_IN_ERROR not in body


@pytest.mark.urls("tests.security.error_urls")
def test_a_crash_in_a_page_is_the_portals_500_page_without_traceback(demo):
    client = Client(raise_request_exception=False)
    client.force_login(demo.engineer)
    response = client.get("/crash/")
    assert response.status_code == 500
    body = response.content.decode()
    assert "Something went wrong" in body
    assert "Traceback" not in body and SECRET_IN_ERROR not in body


def test_a_csrf_failure_is_the_portals_page(demo):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "engineer", "password": PASSWORD})
    assert response.status_code == 403
    assert "Form expired" in response.content.decode()
    assert not _signed_in(client)


# --- outages ----------------------------------------------------------------------------


def _in_a_thread_with_a_dead_database(request):
    """Run ``request()`` in a thread whose database connection points at a closed port.

    The thread opens its own connection from the shared settings, so the test's own
    connection (and its transaction) stays as it is.
    """
    settings_dict = connection.settings_dict
    saved = settings_dict["PORT"], settings_dict["HOST"]
    answer = {}

    def run():
        try:
            answer["response"] = request()
        finally:
            connections.close_all()

    settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", "1"
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
    finally:
        settings_dict["PORT"], settings_dict["HOST"] = saved
    return answer["response"]


def test_api_answers_503_database_unavailable_when_postgresql_is_down(demo):
    client = Client(HTTP_AUTHORIZATION="Bearer some-token", raise_request_exception=False)
    response = _in_a_thread_with_a_dead_database(lambda: client.get("/api/v1/changes/"))
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response["Retry-After"] == "60"


def test_pages_show_a_friendly_503_when_postgresql_is_down(demo):
    client = Client(raise_request_exception=False)
    client.force_login(demo.engineer)
    response = _in_a_thread_with_a_dead_database(lambda: client.get("/changes/"))
    assert response.status_code == 503
    body = response.content.decode()
    assert "Temporarily unavailable" in body and "database is unavailable" in body
    assert "Traceback" not in body and "OperationalError" not in body


@pytest.mark.urls("tests.security.error_urls")
def test_api_answers_503_queue_unavailable_when_redis_is_down(demo, api, settings):
    client = api(demo.engineer)
    client.raise_request_exception = False
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": DEAD["REDIS_URL"]}}
    # What needs Redis to answer says so with a code ...
    response = client.get("/api/v1/cache-probe/")
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
    assert response["Retry-After"]
    # ... while reads that do not need it keep working (the rate limit is not counted).
    response = client.get("/api/v1/changes/")
    assert response.status_code == 200
