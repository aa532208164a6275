"""Transactions that die of a deadlock or a serialization failure are run again.

PostgreSQL settles a deadlock by cancelling one of the transactions in it (SQLSTATE
40P01), and a serializable transaction that cannot be ordered with the others fails
with 40001. Neither is an outage nor the client's fault: the transaction was rolled
back whole and the same work run again normally succeeds. So:

- a request whose transaction died so is run again, up to ``ATTEMPTS`` times in all
  (``RetryTransientMiddleware``), provided no state change of that request was
  committed before it died: every state change is a service that writes its audit
  event, and the connection counts the times it sealed events into the chain
  (``audit.db_backend``), so a request whose count moved is never run twice;
- a request that still fails, or may not be run again, answers 409
  ``concurrent_update`` ("try again"), never 503 ``database_unavailable`` and never a
  500 (``core.error_views.conflict_response``, called by
  ``core.middleware.ServiceUnavailableMiddleware``);
- a Celery task is run again the same way (``RetryTransientTask``, every task's base
  class, portal/celery.py); tasks take ids and are safe to run twice by design.
"""

from __future__ import annotations

import logging
import random
import time

from celery import Task
from django.db import connection

logger = logging.getLogger(__name__)

# Deadlock detected, serialization failure.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
ATTEMPTS = 4
CODE = "concurrent_update"
DETAIL = ("Another action changed the same records at the same moment and this one was "
          "stopped; nothing of it was saved. Try again.")


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps) is a deadlock or a serialization failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def backoff(attempt: int) -> None:
    """A short, random pause before attempt ``attempt + 1``, so that the transactions
    that collided do not collide again in step."""
    time.sleep(random.uniform(0, 0.05 * 2 ** attempt))


def _seals() -> int:
    return getattr(connection, "audit_seals", 0)


# --- requests ---------------------------------------------------------------------------


class RetryTransientMiddleware:
    """Runs a request again when its transaction died of a deadlock or a serialization
    failure and none of its state changes were committed before (module docstring).

    The body is read into memory first (``request.body``) so that each attempt parses
    it afresh; a multipart upload, which is streamed instead, is not run again.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        replayable = self._keep_body(request)
        attempt = 0
        while True:
            seals = _seals()
            response = self.get_response(request)
            if not getattr(response, "transient_failure", False):
                return response
            attempt += 1
            if not replayable or attempt >= ATTEMPTS or _seals() != seals:
                logger.warning("%s %s: %s after %d attempt(s)", request.method, request.path,
                               CODE, attempt)
                return response
            logger.info("%s %s: transaction died of a deadlock or serialization failure; "
                        "attempt %d", request.method, request.path, attempt + 1)
            backoff(attempt)

    @staticmethod
    def _keep_body(request) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        if request.content_type == "multipart/form-data":
            return hasattr(request, "_body")
        try:
            request.body  # noqa: B018 - read into memory, kept on the request
        except Exception:  # noqa: BLE001 - too big or already streamed: not replayable
            return hasattr(request, "_body")
        return True


# --- Celery tasks -----------------------------------------------------------------------


class RetryTransientTask(Task):
    """Every task's base class: a task whose transaction died of a deadlock or a
    serialization failure is run again, up to ``ATTEMPTS`` times in all."""

    def __call__(self, *args, **kwargs):
        attempt = 0
        while True:
            try:
                return super().__call__(*args, **kwargs)
            except Exception as exc:
                attempt += 1
                if not is_transient(exc) or attempt >= ATTEMPTS:
                    raise
                logger.info("task %s: transaction died of a deadlock or serialization "
                            "failure; attempt %d", self.name, attempt + 1)
                backoff(attempt)
