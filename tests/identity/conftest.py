"""Identity tests: a real OpenID Connect provider on loopback, browsers with virtual
authenticators. The browser fixtures are the end-to-end tests' own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from portal import embedded
from tests.conftest import wait_for
from tests.e2e.conftest import page, screenshot  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
IDP_DATABASE = "identity_provider_test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Provider:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.issuer = f"{self.url}/o"

    def control(self, **body) -> None:
        request = urllib.request.Request(f"{self.url}/control/", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def identity_provider(embedded_services):
    """django-oauth-toolkit with OpenID Connect (RS256), its own database, one process."""
    port = free_port()
    env = {**os.environ, "PORTAL_PG_PORT": str(embedded.pg_port()),
           "IDP_DATABASE": IDP_DATABASE}
    log = open(Path(embedded.var_dir()) / f"identity-provider-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "tests.identity.idp_server", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    provider = Provider(port)
    try:
        wait_for(lambda: proc.poll() is not None
                 or _up(f"{provider.issuer}/.well-known/openid-configuration"), timeout=60)
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        yield provider
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=embedded.pg_port(), user="portal",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{IDP_DATABASE}" WITH (FORCE)')
