"""Writing the audit trail (DESIGN.md section 6).

Services call ``audit_record`` inside the transaction of the change they make,
so the event and the change commit or roll back together.

The chain is sealed at commit: ``audit_record`` hands the event to the connection
(``audit.db_backend``), and just before the transaction commits ``seal`` takes the
chain's advisory lock, links the transaction's events after the current head and
inserts them. The lock is thus the last one any writer takes and is held only for
those inserts and the commit, so a writer holding it never waits for a row lock that
another writer, queued for the chain, holds: the chain cannot take part in a deadlock.
Ids, hashes and times still follow one linear order (the order of commits), so
``verify_chain`` and the signed checkpoints are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction

from audit.models import AuditCheckpoint, AuditEvent
from core import clock, context

GENESIS_HASH = "0" * 64
# Key of the PostgreSQL advisory lock that keeps one linear chain when several
# transactions write events at once. Taken only by ``seal`` (at commit), the purge and
# the sign-in recount, never before a row lock (see the module docstring).
AUDIT_CHAIN_LOCK = 7_300_001
# The fields an event's hash covers, in the order canonical() names them.
HASHED_FIELDS = (
    "occurred_at", "actor_id", "actor_name", "actor_kind", "action", "object_type",
    "object_id", "object_repr", "environment", "before", "after", "reason", "request_id",
    "ip", "user_agent", "prev_hash",
)


class AuditError(Exception):
    """An audit write that cannot be trusted: a bug, never a user error."""


@dataclass(frozen=True)
class System:
    """The portal itself acting (a worker, beat, a hook), with the reason why."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise AuditError("a system actor needs a reason")


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def canonical(event: AuditEvent | dict) -> str:
    """The canonical JSON form that an event's hash covers (a model or a ``values()`` row)."""
    if isinstance(event, AuditEvent):
        row = {name: getattr(event, name) for name in HASHED_FIELDS}
    else:
        row = event
    payload = {name: row[name] for name in HASHED_FIELDS}
    payload["occurred_at"] = row["occurred_at"].isoformat()
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash(event: AuditEvent | dict) -> str:
    return hashlib.sha256(canonical(event).encode()).hexdigest()


def audit_record(
    *,
    actor: Any,
    action: str,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str | int = "",
    object_repr: str = "",
    environment: str = "",
    before: dict | None = None,
    after: dict | None = None,
    reason: str = "",
) -> AuditEvent:
    """Append one event to the chain when the caller's transaction commits (``seal``);
    dropped if it rolls back. Must run inside the caller's transaction."""
    if actor is None or (not isinstance(actor, System) and not getattr(actor, "pk", None)):
        raise AuditError(f"audit event {action!r} has no actor")
    if not connection.in_atomic_block:
        raise AuditError(f"audit event {action!r} written outside a transaction")

    ctx = context.current()
    if isinstance(actor, System):
        actor_user, actor_name, actor_kind = None, "system", "system"
        reason = reason or actor.reason
    else:
        actor_user, actor_name = actor, actor.get_username()
        actor_kind = "api" if ctx.client else "user"
        if ctx.client:
            actor_name = f"{actor_name} (token {ctx.client})"

    if obj is not None:
        object_type = object_type or obj._meta.model_name
        object_id = object_id or obj.pk
        object_repr = object_repr or str(obj)

    event = AuditEvent(
        occurred_at=clock.now(),
        actor=actor_user,
        actor_name=actor_name[:150],
        actor_kind=actor_kind,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        object_repr=str(object_repr)[:300],
        environment=environment,
        before=_jsonable(before),
        after=_jsonable(after),
        reason=reason,
        request_id=ctx.request_id,
        ip=ctx.ip,
        user_agent=ctx.user_agent,
    )
    defer = getattr(connection, "audit_defer", None)
    if defer is None or not defer(event):
        # A connection that cannot seal at commit (not ``audit.db_backend``), or a test
        # case's transaction, which never commits: sealed here, as the last thing.
        seal([event])
    return event


def seal(events: list[AuditEvent]) -> None:
    """Link ``events`` after the chain's head, in order, and insert them.

    Called by the connection just before its transaction commits. Under the chain lock
    (held until that commit) the head read here is the last committed event, so ids,
    times and hashes follow the order of commits: one linear chain, no forks. The
    event's time is when it joined the chain, read under the lock, so the trail is in
    time order as well as id order (the auditor's time filters and the purge rely on
    it). Nothing here waits for a row another transaction may hold.
    """
    if not events:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_CHAIN_LOCK])
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    prev = prev or GENESIS_HASH
    for event in events:
        event.occurred_at = clock.now()
        event.prev_hash = prev
        event.hash = compute_hash(event)
        event.save(force_insert=True)
        prev = event.hash
        if event.action in SIGN_IN_ACTIONS:
            _count_sign_in(event)


# The events the access review counts per day (``SignInDay``).
SIGN_IN_ACTIONS = ("auth.login", "auth.login_failed")

# One day's count, keyed as ``SignInDay``'s unique constraint: the person for a
# sign-in, the name typed for a refusal. Shared by the live count and the rebuild.
_SIGN_IN_KEY_SQL = (
    "action, (occurred_at AT TIME ZONE 'UTC')::date, "
    "CASE WHEN action = 'auth.login' THEN coalesce(actor_id, 0) ELSE 0 END, "
    "CASE WHEN action = 'auth.login' THEN '' ELSE left(object_repr, 150) END"
)


def _count_sign_in(event: AuditEvent) -> None:
    """Add the event to its day's count, in the event's own transaction (so the count
    and the trail commit together). Only ``seal`` writes counts, under the chain lock,
    so the upsert never waits on another writer."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO portal_signinday (action, day, actor_id, name, count) "
            f"SELECT {_SIGN_IN_KEY_SQL}, 1 FROM portal_auditevent WHERE id = %s "
            "ON CONFLICT (action, day, actor_id, name) "
            "DO UPDATE SET count = portal_signinday.count + 1",
            [event.pk],
        )


@transaction.atomic
def rebuild_sign_in_days() -> int:
    """Recount every day's sign-ins from the trail (after a bulk load that wrote events
    around ``audit_record``, or to check the counts). Returns the number of day rows."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_CHAIN_LOCK])
        cursor.execute("DELETE FROM portal_signinday")
        cursor.execute(
            "INSERT INTO portal_signinday (action, day, actor_id, name, count) "
            f"SELECT {_SIGN_IN_KEY_SQL}, count(*) FROM portal_auditevent "
            "WHERE action = ANY(%s) GROUP BY 1, 2, 3, 4",
            [list(SIGN_IN_ACTIONS)],
        )
        return cursor.rowcount


# ---------------------------------------------------------------------------
# Verification


@dataclass
class ChainReport:
    """What ``verify_chain`` found: how far it got and the first broken link, if any."""

    checked: int = 0
    problem: str | None = None
    broken_event_id: int | None = None
    first_event_id: int | None = None
    head_event_id: int | None = None
    head_hash: str | None = None
    checkpoint: AuditCheckpoint | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _short(digest: str) -> str:
    return f"{digest[:12]}…"


def _describe_broken_link(row: dict, prev: dict | None, expected_prev: str) -> str:
    """Why ``row`` does not follow what came before it (deleted, reordered or rewritten)."""
    found = (AuditEvent.objects.filter(hash=row["prev_hash"])
             .values_list("id", flat=True).first())
    if prev is None:
        where = (f"the retention checkpoint (hash {_short(expected_prev)})"
                 if expected_prev != GENESIS_HASH else "the start of the trail")
        if found is not None:
            return (f"event {row['id']} is the oldest after {where} but follows event "
                    f"{found}: the rows were reordered")
        return (f"event {row['id']} is the oldest after {where} but follows hash "
                f"{_short(row['prev_hash'])}, which no checkpoint explains: events before it "
                "were deleted")
    if found is not None:
        return (f"event {row['id']} should follow event {prev['id']} but follows event "
                f"{found}: the rows were reordered")
    return (f"event {row['id']} should follow event {prev['id']} (hash "
            f"{_short(expected_prev)}) but follows hash {_short(row['prev_hash'])}, which is "
            f"no longer in the trail: an event between them was deleted, or event "
            f"{prev['id']} was rewritten together with its hash")


def verify_chain(*, chunk_size: int = 5000) -> ChainReport:
    """Walk the chain oldest first from the latest retention checkpoint.

    Every event must hash to its stored ``hash`` (no field changed) and carry the
    hash of the event before it as ``prev_hash`` (nothing deleted, inserted or
    reordered); the oldest remaining event follows the checkpoint, or the genesis
    hash when nothing was ever purged. Stops at the first broken link.
    """
    if connection.in_atomic_block:
        return _verify_chain(chunk_size)
    with transaction.atomic():
        # One snapshot for the whole walk, so a purge or new events committed
        # meanwhile cannot look like a break.
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _verify_chain(chunk_size)


def _verify_chain(chunk_size: int) -> ChainReport:
    report = ChainReport()
    checkpoint = AuditCheckpoint.objects.order_by("-last_event_id").first()
    report.checkpoint = checkpoint
    expected_prev = checkpoint.last_hash if checkpoint else GENESIS_HASH
    start = checkpoint.last_event_id if checkpoint else 0
    prev: dict | None = None
    rows = (AuditEvent.objects.filter(id__gt=start).order_by("id")
            .values("id", "hash", *HASHED_FIELDS).iterator(chunk_size=chunk_size))
    for row in rows:
        if report.first_event_id is None:
            report.first_event_id = row["id"]
        if row["prev_hash"] != expected_prev:
            report.problem = _describe_broken_link(row, prev, expected_prev)
            report.broken_event_id = row["id"]
            return report
        if compute_hash(row) != row["hash"]:
            report.problem = (f"event {row['id']} ({row['action']} by {row['actor_name']}) was "
                              "altered after it was written: its fields no longer match its hash")
            report.broken_event_id = row["id"]
            return report
        expected_prev = row["hash"]
        prev = row
        report.checked += 1
    if prev is not None:
        report.head_event_id, report.head_hash = prev["id"], prev["hash"]
    elif checkpoint is not None:
        report.head_hash = checkpoint.last_hash
    return report
