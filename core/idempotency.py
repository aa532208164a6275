"""Idempotency-Key for creating POSTs (IETF draft "The Idempotency-Key HTTP Header Field").

A client that sends ``Idempotency-Key: <key>`` may retry the request as often
as it likes; the portal acts once:

- first use: the key is recorded (committed at once, so a concurrent retry
  sees it), the request runs, and its answer is stored with the key;
- same key, same method, path and body: the stored answer is replayed with
  ``Idempotent-Replayed: true``, and nothing runs again;
- same key, method and path with a different body: 422 ``idempotency_key_reused``;
- same key while the first request is still running: 409 ``idempotency_in_flight``;
- a request the portal refused (any 4xx: invalid input, a missing object, a permission,
  a state conflict) did nothing, so its answer is not kept and its key stays free: a
  retry runs again, and the key may be used for another request (as Stripe does for
  requests that fail validation).

Keys belong to one user (a client never sees another's answers) and one resource (the
same key sent to another method or path names another request), and are kept
for ``RETENTION`` (24 hours); after that the key may be used afresh. Answers of
5xx (none are expected) are not kept either, so such a request may be retried.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from rest_framework.response import Response

from core import clock
from core.errors import Conflict, DomainError, Invalid
from core.models import IdempotencyKey

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETENTION = timedelta(hours=24)
# A key still "running" after this long belongs to a request whose process died;
# a retry may take it over. Far longer than any request the API serves.
ABANDONED_AFTER = timedelta(minutes=10)
MAX_KEY_LENGTH = 255


class KeyReused(DomainError):
    status = 422
    code = "idempotency_key_reused"


# Visible ASCII, spaces allowed inside, 1 to 255 characters: what the OpenAPI schema
# states (core.schema.IDEMPOTENCY_HEADER), so clients can check a key before sending it.
KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
_KEY = re.compile(KEY_PATTERN)


def parse_key(raw: str) -> str:
    """The key as the draft sends it (a structured-field string, quoted), or bare."""
    if not _KEY.fullmatch(raw):
        raise Invalid("the Idempotency-Key header must be 1 to 255 visible ASCII characters",
                      fields={HEADER: ["Send 1 to 255 visible ASCII characters, e.g. a UUID."]})
    inner = raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"' and _KEY.fullmatch(inner):
        return inner
    return raw


def fingerprint(method: str, path: str, body) -> str:
    canonical = json.dumps({"method": method, "path": path, "body": body}, sort_keys=True,
                           separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_begin(*, user, key: str, method: str, path: str, request_hash: str
                      ) -> tuple[IdempotencyKey | None, IdempotencyKey | None]:
    """Claim ``key`` for this request: (claimed row, None), or (None, completed row to replay).

    The claim is committed before the request runs: the unique (user, key)
    constraint lets exactly one of two concurrent requests through.
    """
    now = clock.now()
    IdempotencyKey.objects.filter(user=user, created_at__lt=now - RETENTION).delete()
    for _attempt in range(2):
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(user=user, key=key, method=method,
                                                    path=path[:300],
                                                    request_hash=request_hash)
            return row, None
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(user=user, method=method,
                                                     path=path[:300], key=key).first()
            if existing is None:
                continue  # expired and purged between our insert and read: claim again
        if existing.request_hash != request_hash:
            raise KeyReused(
                f"the Idempotency-Key {key!r} was used for a different request "
                f"({existing.method} {existing.path}); send a new key for a new request")
        if existing.completed_at is not None:
            return None, existing
        if existing.created_at < now - ABANDONED_AFTER:
            # Take over a claim whose request never finished; the conditional delete
            # lets one retry win if several arrive together.
            IdempotencyKey.objects.filter(pk=existing.pk, completed_at__isnull=True).delete()
            continue
        raise Conflict(
            f"a request with the Idempotency-Key {key!r} is still being processed; "
            "retry in a moment", code="idempotency_in_flight")
    raise Conflict(f"the Idempotency-Key {key!r} is contended; retry in a moment",
                   code="idempotency_in_flight")


def idempotency_complete(*, row: IdempotencyKey, status: int, body) -> None:
    stored = json.loads(json.dumps(body, cls=DjangoJSONEncoder)) if body is not None else None
    IdempotencyKey.objects.filter(pk=row.pk).update(
        response_status=status, response_body=stored, completed_at=clock.now())


def idempotency_release(*, row: IdempotencyKey) -> None:
    """Forget a claim whose request produced no answer worth replaying."""
    IdempotencyKey.objects.filter(pk=row.pk, completed_at__isnull=True).delete()


def idempotency_keys_purge(*, now=None) -> int:
    """Delete keys past their retention period; returns how many went."""
    cutoff = (now or clock.now()) - RETENTION
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def idempotent(handler):
    """Decorate an API view's ``post`` so that it honours ``Idempotency-Key``.

    It runs after authentication, permissions and throttling (the key is scoped
    to the authenticated user) and stores the answer the handler gives when it acted
    (2xx); a refusal (4xx) changed nothing and frees the key.
    """

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        raw = request.headers.get(HEADER)
        if raw is None:
            return handler(view, request, *args, **kwargs)
        key = parse_key(raw)
        request_hash = fingerprint(request.method, request.path, request.data)
        row, done = idempotency_begin(user=request.user, key=key, method=request.method,
                                      path=request.path, request_hash=request_hash)
        if done is not None:
            response = Response(done.response_body, status=done.response_status)
            response[REPLAYED_HEADER] = "true"
            return response
        try:
            try:
                response = handler(view, request, *args, **kwargs)
            except Exception as exc:
                # An exception nobody maps (a bug) re-raises here and the claim is released.
                response = view.handle_exception(exc)
        except BaseException:
            idempotency_release(row=row)
            raise
        if response.status_code >= 400 or not hasattr(response, "data"):
            idempotency_release(row=row)
        else:
            idempotency_complete(row=row, status=response.status_code, body=response.data)
        return response

    wrapper.idempotent = True
    return wrapper
