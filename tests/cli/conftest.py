"""Fixtures for the command-line client: a live portal, tokens, and portalctl as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.conftest import PASSWORD, Cast, stepped_up

PORTALCTL = str(Path(sys.executable).with_name("portalctl"))
# CI variables of the machine running the tests must not leak into the runs below.
CI_VARIABLES = ("PORTAL_RUN_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID", "PORTAL_URL",
                "PORTAL_TOKEN", "PORTAL_RETRIES", "PORTAL_STEP_UP_CODE")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def portal_live(transactional_db, live_server):
    """The demo cast, committed so that the live server and the worker see it."""
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    return Cast()


@pytest.fixture
def token():
    """token(user, *scopes) -> a clear API token for that user, stepped up by its owner
    when they hold a second factor (tests.conftest.stepped_up)."""
    from audit.trail import System
    from identity.services import api_token_issue

    counter = {"n": 0}

    def issue(user, *scopes) -> str:
        counter["n"] += 1
        kwargs = {"scopes": list(scopes)} if scopes else {}
        token, raw = api_token_issue(actor=System("test"), user=user,
                                     name=f"cli-{user.username}-{counter['n']}", **kwargs)
        stepped_up(token)
        return raw

    return issue


@pytest.fixture
def portalctl(live_server):
    """portalctl(token, *args, url=..., env=...) runs the installed command; returns a Run."""

    def run(token: str | None, *args: str, url: str | None = None, timeout: float = 120,
            **env) -> Run:
        environ = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
        environ["PORTAL_URL"] = url or live_server.url
        if token:
            environ["PORTAL_TOKEN"] = token
        environ.update({k: str(v) for k, v in env.items()})
        done = subprocess.run([PORTALCTL, *args], env=environ, capture_output=True, text=True,
                              timeout=timeout)
        return Run(done.returncode, done.stdout, done.stderr)

    return run
