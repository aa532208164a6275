"""schemathesis' CLI against a live portal, as a client team runs it (docs/api.md,
"Checking the contract"): every default check and phase (examples, coverage, fuzzing,
stateful), for the engineer, the CI account and an outsider with no permissions.

The only refusals forgiven are those of references to objects that do not exist, told
apart by their error code (tests/api/schemathesis_hooks.py); any other failure is a
mismatch between the schema and the server, and fails the test.

``make test`` runs a bounded search; ``make nightly`` a long one with every role:
PORTAL_SCHEMATHESIS_EXAMPLES (examples per operation, default 10),
PORTAL_SCHEMATHESIS_ROLES (comma-separated usernames, or ``all``),
PORTAL_SCHEMATHESIS_SEED (default 1; ``random`` for a new one each run, printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import schemathesis
from django.core import signals
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections

from audit.trail import System
from core.throttling import AnonThrottle, UserThrottle
from identity.services import api_token_issue
from tests.conftest import PASSWORD, Cast, stepped_up
from tests.factories import ReleaseFactory, request_change

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
HOOKS = "tests.api.schemathesis_hooks"
ALL_ROLES = ["engineer", "techlead", "qa", "cab", "cab2", "security", "business", "oncall",
             "auditor", "admin", "ci", "outsider"]
EXAMPLES = int(os.environ.get("PORTAL_SCHEMATHESIS_EXAMPLES", "10"))
# One worker per CLI run (schemathesis' threads share Hypothesis' lambda-source cache,
# which fails now and then under several workers: "AST constructor recursion depth
# mismatch"); the roles run in parallel processes instead, against the live server's
# request threads.
WORKERS = int(os.environ.get("PORTAL_SCHEMATHESIS_WORKERS", "1"))
PARALLEL_ROLES = int(os.environ.get("PORTAL_SCHEMATHESIS_PARALLEL", "3"))
SEED = os.environ.get("PORTAL_SCHEMATHESIS_SEED", "1")
_roles = os.environ.get("PORTAL_SCHEMATHESIS_ROLES", "engineer,ci,outsider")
ROLES = ALL_ROLES if _roles == "all" else [r.strip() for r in _roles.split(",") if r.strip()]


@contextmanager
def wsgi_app(monkeypatch):
    # The test database lives in one transaction; requests sent straight to the
    # WSGI handler must not close its connection at the end of each request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    monkeypatch.setattr(UserThrottle, "THROTTLE_RATES", {"user": None})
    monkeypatch.setattr(AnonThrottle, "THROTTLE_RATES", {"anon": None})
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def contract_portal(transactional_db, live_server, monkeypatch):
    """A live portal with the demo cast, a release and a change (committed, so the live
    server sees them), without rate limits (a 429 would hide what the runs look for)."""
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    cast = Cast()
    request_change(cast.engineer, "staging", release=ReleaseFactory())
    monkeypatch.setattr(UserThrottle, "THROTTLE_RATES", {"user": None})
    monkeypatch.setattr(AnonThrottle, "THROTTLE_RATES", {"anon": None})
    return live_server.url, cast


def run_schemathesis(url: str, token: str, *, tmp_path: Path, examples: int = EXAMPLES,
                     seed: str = SEED) -> tuple[int, str]:
    """The CLI with its defaults, but for the missing-object forgiveness: (exit code,
    output)."""
    args = [SCHEMATHESIS, "run", f"{url}/api/schema/", "-H", f"Authorization: Bearer {token}",
            "-n", str(examples), "--no-color", "--workers", str(WORKERS),
            # A connection the loaded live server dropped is tried again, not a finding.
            "--request-retries", "2",
            "--exclude-checks", "positive_data_acceptance",
            "--report-dir", str(tmp_path)]
    if seed != "random":
        args += ["--seed", seed]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800,
                          cwd=tmp_path)
    return done.returncode, done.stdout + done.stderr


def summary(output: str) -> str:
    """The failures and errors of a run (their first 12000 characters)."""
    starts = [i for i in (output.find("= FAILURES ="), output.find("= ERRORS =")) if i >= 0]
    return output[min(starts):][:12000] if starts else output[-3000:]


def test_schemathesis_finds_no_mismatch_between_the_schema_and_the_portal(contract_portal,
                                                                          tmp_path):
    """One CLI run per role, PARALLEL_ROLES at a time, against the same live portal."""
    url, cast = contract_portal
    tokens = {}
    for role in ROLES:
        token, raw = api_token_issue(actor=System("test"), user=getattr(cast, role),
                                     name="schemathesis")
        stepped_up(token)
        tokens[role] = raw

    def run(role):
        directory = tmp_path / role
        directory.mkdir()
        return role, *run_schemathesis(url, tokens[role], tmp_path=directory)

    with ThreadPoolExecutor(max_workers=PARALLEL_ROLES) as pool:
        results = list(pool.map(run, ROLES))
    failed = []
    for role, code, output in results:
        print(f"schemathesis as {role}:", output[output.rfind("SUMMARY"):])
        assert "Tested: " in output, output[-3000:]
        if code != 0:
            failed.append(f"as {role}:\n{summary(output)}")
    assert not failed, "\n\n".join(failed)


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_deeply_nested_bodies_answer_the_documented_400(demo, client, monkeypatch):
    """Every operation that takes a body answers JSON nested 500 deep with the 400 its
    schema documents (code ``malformed``), checked by all of schemathesis' checks that
    apply to a case written by hand."""
    _, raw = api_token_issue(actor=System("test"), user=demo.engineer, name="deep")
    headers = {"Authorization": f"Bearer {raw}"}
    schema = schemathesis.openapi.from_dict(
        json.loads(client.get("/api/schema/?format=json").content))
    answered = []
    with wsgi_app(monkeypatch) as app:
        schema.app = app
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.body:
                continue
            case = operation.Case(
                path_parameters={p.name: 1 for p in operation.path_parameters},
                body=_nested(500), media_type="application/json",
                headers={"Idempotency-Key": str(uuid.uuid4())})
            response = case.call(base_url="http://testserver", headers=headers)
            case.validate_response(response, headers=headers)
            answered.append((operation.label, response.status_code,
                             response.json().get("code")))
    assert len(answered) >= 10
    assert all(status == 400 and code == "malformed" for _, status, code in answered), answered
