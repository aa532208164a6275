"""Property-based run of schemathesis over the whole OpenAPI schema, for several roles.

Every generated request, valid or not, must get an answer that is not a 5xx and
that matches the schema: status code, content type, headers and body.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.audit import System
from core.services import api_token_issue
from core.throttling import AnonThrottle, UserThrottle
from tests.factories import ReleaseFactory, request_change

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 15
ROLES = ["engineer", "techlead", "auditor", "admin", "outsider", None]

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
        failures = _run_all(schema, app, headers, role)
    print(f"schemathesis [{role}]: {TOTALS['cases']} cases so far, {TOTALS['failed']} failed")
    assert not failures, "\n\n".join(failures)


def _run_all(schema, app, headers, role) -> list[str]:
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        TOTALS["operations"] += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case):
            TOTALS["cases"] += 1
            case.call_and_validate(app=app, base_url="http://testserver",
                                   headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # one failing operation must not hide the others
            TOTALS["failed"] += 1
            failures.append(f"{operation.label} as {role}: {str(exc)[:1500]}")
    return failures
