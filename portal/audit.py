"""Writing the audit trail (DESIGN.md section 6).

Services call ``audit_record`` inside the transaction of the change they make,
so the event and the change commit or roll back together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models
from django.utils import timezone

from portal import context
from portal.models import AuditEvent

GENESIS_HASH = "0" * 64
# Key of the PostgreSQL advisory lock that keeps one linear chain when several
# transactions write events at once.
AUDIT_CHAIN_LOCK = 7_300_001


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


def canonical(event: AuditEvent) -> str:
    """The canonical JSON form that an event's hash covers."""
    payload = {
        "occurred_at": event.occurred_at.isoformat(),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "actor_kind": event.actor_kind,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "environment": event.environment,
        "before": event.before,
        "after": event.after,
        "reason": event.reason,
        "request_id": event.request_id,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash(event: AuditEvent) -> str:
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
    """Append one event to the chain. Must run inside the caller's transaction."""
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

    with connection.cursor() as cursor:
        # Serialises chain writers until commit: one linear chain, no forks.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_CHAIN_LOCK])
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()

    event = AuditEvent(
        occurred_at=timezone.now(),
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
        prev_hash=prev or GENESIS_HASH,
    )
    event.hash = compute_hash(event)
    event.save(force_insert=True)
    return event


def verify_chain() -> tuple[int, str | None]:
    """Walk the chain oldest first; return (events checked, first problem or None)."""
    expected_prev = None
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if expected_prev is not None and event.prev_hash != expected_prev:
            return checked, (f"event {event.pk} does not follow the event before it "
                             "(an event is missing or out of order)")
        if expected_prev is None and event.prev_hash != GENESIS_HASH:
            # The oldest remaining event; later retention checkpoints make this legitimate.
            pass
        if compute_hash(event) != event.hash:
            return checked, f"event {event.pk} was altered after it was written"
        expected_prev = event.hash
        checked += 1
    return checked, None
