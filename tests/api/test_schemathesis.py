"""Property-based run of schemathesis over the whole OpenAPI schema, for every role.

Every generated request, valid or not, must get an answer that is not a 5xx and
that matches the schema: status code, content type, headers and body. All of
schemathesis' checks run, in both generation modes: data the schema calls valid
(positive) must not be refused as malformed, and data it calls invalid (negative)
must be refused.
"""

from __future__ import annotations

import json
import re
import uuid
from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance
from schemathesis.generation import GenerationMode

from audit.trail import System
from core.idempotency import KEY_PATTERN
from core.throttling import AnonThrottle, UserThrottle
from identity.services import api_token_issue
from tests.factories import ReleaseFactory, request_change

# Refusals of schema-valid data that a schema cannot express: a reference to an object
# that does not exist (ids and slugs are data, not shape), and rules across fields.
# Any other 400 to valid data means the schema is missing a constraint.
NOT_EXPRESSIBLE_IN_A_SCHEMA = re.compile("|".join([
    r"does not exist",
    r"^No such ",
    r"Choose a date between the years 1970 and 2200",
    r"^Invalid pk",
    r"Give the change id, the release id, or application and version",
    r"Report a check, or the authors and mergers",
    r"Give the environment with the release",
    r"Send check and status together",
    r"is not (inside|under) a trusted artifact source",
    r"a release with an artifact carries its SHA-256",
    # A policy document's own rules (docs/policies.md): YAML and its schema, not JSON's.
    r"^document(\.|\[|:)",
]))


@schemathesis.check
def valid_data_accepted(ctx, response, case):
    """schemathesis' positive_data_acceptance, except refusals no schema can express."""
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and response.status_code == 400:
        body = json.loads(response.content or b"{}")
        if "NUL" in body.get("detail", ""):
            # PostgreSQL cannot store NUL characters; no string field takes one.
            return None
        messages = [m for ms in (body.get("fields") or {}).values() for m in ms]
        if body.get("code") == "invalid" and messages and all(
                NOT_EXPRESSIBLE_IN_A_SCHEMA.search(m) for m in messages):
            return None
    return positive_data_acceptance(ctx, response, case)


load_all_checks()
ALL_CHECKS = [valid_data_accepted if check is positive_data_acceptance else check
              for check in CHECKS.get_all() if check is not valid_data_accepted]
# Bounded: 8 roles x ~30 operations x 2 modes stays within a few minutes.
EXAMPLES_PER_OPERATION = 4
ROLES = ["engineer", "techlead", "cab", "auditor", "ci", "admin", "outsider", None]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
VALID_KEY = re.compile(KEY_PATTERN)

TOTALS = {"cases": 0, "failed": 0, "operations": 0}


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


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_answers_without_5xx_and_as_the_schema_says(demo, client, monkeypatch,
                                                                     role):
    release = ReleaseFactory()
    request_change(demo.engineer, "staging", release=release)
    headers = {}
    if role is not None:
        _, raw = api_token_issue(actor=System("test"), user=getattr(demo, role),
                                 name="schemathesis")
        headers = {"Authorization": f"Bearer {raw}"}
    raw_schema = json.loads(client.get("/api/schema/?format=json").content)
    schema = schemathesis.openapi.from_dict(raw_schema)
    with wsgi_app(monkeypatch) as app:
        # Requests, and the probes some checks send (without credentials), go to the app.
        schema.app = app
        failures = _run_all(schema, headers, role)
    print(f"schemathesis [{role}]: {TOTALS['cases']} cases so far, {TOTALS['failed']} failed")
    assert not failures, "\n\n".join(failures)


def _run_all(schema, headers, role) -> list[str]:
    failures = []
    for result, mode in ((r, m) for r in schema.get_all_operations() for m in MODES):
        operation = result.ok()
        TOTALS["operations"] += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case):
            TOTALS["cases"] += 1
            # A key names one request: generated keys repeat across different requests,
            # which the portal rightly refuses (422); each case gets a key of its own.
            key = (case.headers or {}).get("Idempotency-Key")
            if isinstance(key, str) and VALID_KEY.fullmatch(key):
                case.headers["Idempotency-Key"] = str(uuid.uuid4())
            case.call_and_validate(base_url="http://testserver", headers=headers,
                                   checks=ALL_CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # one failure must not hide others
            TOTALS["failed"] += 1
            failures.append(f"{operation.label} ({mode.value}) as {role}: {str(exc)[:1500]}")
    return failures


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
