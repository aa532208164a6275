"""Production settings: `check --deploy` is clean, and a start without a secret key fails plainly.

Each test runs manage.py in a subprocess with production variables. DATABASE_URL and
REDIS_URL point at a closed port, so no embedded server starts and no database is needed
(the checks never connect).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "portal.example.com",
    "DATABASE_URL": "postgres://u@127.0.0.1:1/x",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def _manage(*args: str, secret_key: str | None) -> subprocess.CompletedProcess:
    # Start from a clean slate: no DJANGO_* or URL left over from the developer's shell
    # or from the test plugin (which sets DJANGO_DEBUG=true).
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(PRODUCTION_ENV)
    if secret_key is not None:
        env["DJANGO_SECRET_KEY"] = secret_key
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING",
                     secret_key=secrets.token_urlsafe(50))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in result.stdout, output
    assert "WARNING" not in output, output


def test_production_start_without_secret_key_fails_with_a_clear_message():
    result = _manage("check", secret_key=None)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "ImproperlyConfigured: Set the DJANGO_SECRET_KEY environment variable" in (
        result.stderr), result.stderr
