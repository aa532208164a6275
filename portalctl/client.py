"""The HTTP side of portalctl: requests, retries, idempotency keys, error answers.

Exit codes (documented in docs/ci.md):

- 0 ``OK``: the portal did what was asked (the deployment succeeded);
- 1 ``FAILED``: it ran but did not succeed (failed, rolled back, cancelled, not
  ready, or still unfinished when the wait ended);
- 2 ``REFUSED``: the portal refused the request (a 4xx answer; its ``code`` is printed),
  or the command line was wrong;
- 3 ``UNREACHABLE``: the portal could not be reached or answered with a server error
  (5xx) after the retries; the step may be retried as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import httpx

from portalctl import __version__

OK, FAILED, REFUSED, UNREACHABLE = 0, 1, 2, 3

# Variables CI systems set to one value per pipeline run, kept across re-runs of a job.
RUN_ID_VARIABLES = ("PORTAL_RUN_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID")
# A replayed error answer means nothing was done: the next key in the chain is tried.
MAX_KEY_CHAIN = 50
RETRY_STATUSES = {429, 502, 503, 504}
MAX_RETRY_WAIT = 30.0


class PortalError(Exception):
    exit_code = FAILED


@dataclass
class Refused(PortalError):
    """A 4xx answer: the portal's ``code`` and ``detail``, and the whole body."""

    status: int
    code: str
    detail: str
    body: dict = field(default_factory=dict)
    exit_code = REFUSED

    def __str__(self) -> str:
        lines = [f"refused ({self.status} {self.code}): {self.detail}"]
        for name, messages in (self.body.get("fields") or {}).items():
            lines.append(f"  {name}: {' '.join(messages)}")
        for blocker in self.body.get("blockers") or []:
            lines.append(f"  - {blocker.get('code')}: {blocker.get('message')}")
        return "\n".join(lines)


class Unreachable(PortalError):
    exit_code = UNREACHABLE


def run_id_from_environment(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in RUN_ID_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def derive_key(run_id: str | None, command: str, arguments: dict) -> str:
    """The Idempotency-Key of one step of one pipeline run.

    The same run, command and arguments give the same key, so a retried step is
    recognised by the portal and creates nothing twice. Without a run id each
    invocation has its own random key (its own retries are still safe).
    """
    if not run_id:
        return f"portalctl-{uuid.uuid4()}"
    material = json.dumps({"run": run_id, "command": command, "arguments": arguments},
                          sort_keys=True, separators=(",", ":"), default=str)
    return "portalctl-" + hashlib.sha256(material.encode()).hexdigest()[:48]


@dataclass
class Answer:
    status: int
    body: object
    replayed: bool


class Portal:
    """The REST API v1 of one portal, as one user (the token's)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None, sleep=time.sleep) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self.retries = max(0, retries)
        self.sleep = sleep
        self.http = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                     "User-Agent": f"portalctl/{__version__}"})

    def close(self) -> None:
        self.http.close()

    # --- requests ---------------------------------------------------------------------

    def get(self, path: str, **params) -> object:
        params = {k: v for k, v in params.items() if v is not None}
        return self._send("GET", path, params=params).body

    def post(self, path: str, body: dict | None, *, key: str) -> Answer:
        """POST with an Idempotency-Key; a replayed error walks on to the next key.

        An error answer changed nothing, but the portal replays it for its key for a
        day. So a re-run of a step that was refused earlier (not yet approved, say)
        tries ``key``, then ``key.2``, ``key.3``... until one is new or replays a
        success: deterministic for every re-run, and never acting twice.
        """
        for n in range(1, MAX_KEY_CHAIN + 1):
            attempt_key = key if n == 1 else f"{key}.{n}"
            answer = self._send("POST", path, json=body, key=attempt_key, raise_refusal=False)
            if answer.replayed and answer.status >= 400 and n < MAX_KEY_CHAIN:
                continue
            if answer.status >= 400:
                raise self._refusal(answer)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def step_up(self, code: str) -> dict:
        """Answer the portal's second-factor check with this token (a TOTP or recovery
        code of the token's owner): the token may then make Production decisions for
        a few minutes. Returns ``{kind, checked_at, fresh_until}``."""
        return self._send("POST", "/auth/step-up", json={"code": code}).body

    def _send(self, method: str, path: str, *, params=None, json=None, key=None,
              raise_refusal: bool = True) -> Answer:
        headers = {"Idempotency-Key": key} if key else {}
        url = f"{self.base}{path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, url, params=params, json=json,
                                             headers=headers)
            except httpx.TransportError as exc:
                # Without a key a POST is not retried: the portal may have acted on it.
                if attempt > self.retries or (method != "GET" and not key):
                    raise Unreachable(f"cannot reach the portal at {self.base}: "
                                      f"{exc.__class__.__name__}: {exc}") from None
                self.sleep(min(2 ** (attempt - 1), MAX_RETRY_WAIT))
                continue
            answer = Answer(response.status_code, _body(response),
                            response.headers.get("Idempotent-Replayed") == "true")
            retry = (response.status_code in RETRY_STATUSES or (
                response.status_code == 409 and _code(answer.body) == "idempotency_in_flight"))
            if retry and attempt <= self.retries:
                self.sleep(_retry_after(response, attempt))
                continue
            if response.status_code >= 500:
                raise Unreachable(f"the portal answered {response.status_code} "
                                  f"{_code(answer.body) or ''} for {method} {path}".rstrip())
            if response.status_code >= 400 and raise_refusal:
                raise self._refusal(answer)
            return answer

    @staticmethod
    def _refusal(answer: Answer) -> Refused:
        body = answer.body if isinstance(answer.body, dict) else {}
        return Refused(answer.status, body.get("code") or "error",
                       body.get("detail") or f"HTTP {answer.status}", body)


def _body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return {"code": "not_json", "detail": response.text[:500]}


def _code(body) -> str | None:
    return body.get("code") if isinstance(body, dict) else None


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        wait = float(response.headers.get("Retry-After", ""))
    except ValueError:
        wait = float(2 ** (attempt - 1))
    return max(0.0, min(wait, MAX_RETRY_WAIT))
