"""Loaded by schemathesis' CLI (``SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks``): its
``positive_data_acceptance`` check, except for refusals of references to objects that do
not exist, told apart by the error's ``code`` (docs/api.md, "Checking the contract").

A well-formed id or slug that names nothing is data, not shape: no schema can refuse it
beforehand, so schema-valid requests may meet it. Every other refusal of schema-valid
data is a mismatch between the schema and the server.
"""

from __future__ import annotations

import json
import re
import uuid

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# core.api.NO_SUCH_OBJECT (a body or query names a missing object) and a missing
# sub-resource of one that exists (a checklist item of another change, a 404).
MISSING_OBJECT_CODES = frozenset({"no_such_object", "no_such_item"})


# core.idempotency.KEY_PATTERN: what the schema says an Idempotency-Key is.
VALID_KEY = re.compile(r"^[!-~]([ -~]{0,253}[!-~])?$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """A client sends a fresh Idempotency-Key for each new request (docs/api.md); the
    generator reuses its favourite keys ("0") across different bodies, which the portal
    rightly refuses (422 ``idempotency_key_reused``) once a request with that key to that
    resource succeeded. A well-formed generated key is replaced by a fresh UUID; a
    malformed one is sent as generated (the negative cases)."""
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        case.headers["Idempotency-Key"] = str(uuid.uuid4())


def error_code(response) -> str | None:
    try:
        body = json.loads(response.content or b"{}")
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


@schemathesis.check
def valid_data_accepted_unless_missing_object(ctx, response, case):
    """positive_data_acceptance, forgiving only refusals coded as a missing object."""
    if 400 <= response.status_code < 500 and error_code(response) in MISSING_OBJECT_CODES:
        return None
    return positive_data_acceptance(ctx, response, case)
