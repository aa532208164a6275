"""The retention purge of the audit trail (SOP 13.1).

Events older than the retention period go as one unbroken prefix of the chain, with an
``AuditCheckpoint`` that keeps the rest verifiable. Other apps' records kept for the
same period (deployment logs) go in the same transactions: an app registers a purge of
its own with ``register_purge`` from its ``AppConfig.ready``, and the purge calls it in
each batch, under the lock and the ``portal.audit_purge`` flag that lets the
append-only triggers accept the DELETE.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from audit.models import AuditCheckpoint, AuditEvent, SignInDay
from audit.trail import (
    AUDIT_CHAIN_LOCK,
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditError,
    System,
    audit_record,
    compute_hash,
)
from core import clock

# SOP 13.1: deployment logs (and the trail around them) are kept for two years. The
# retention setting may lengthen this, never shorten it; the PostgreSQL trigger
# (migration portal 0004) enforces the same floor on its own.
RETENTION_FLOOR_DAYS = 730
DEFAULT_RETENTION_DAYS = 730

# What other apps purge with the trail: callables ``purge(*, cutoff, batch_size) -> int``
# that delete at most ``batch_size`` of their rows older than ``cutoff`` and answer how
# many they deleted. Counted as the batch's ``log_lines_removed``.
Purge = Callable[..., int]
_purges: dict[str, Purge] = {}


def register_purge(name: str, purge: Purge) -> None:
    """Have ``purge`` run in every batch of the retention purge (called from an
    ``AppConfig.ready``; registering the same name again replaces it)."""
    _purges[name] = purge


def unregister_purge(name: str) -> None:
    _purges.pop(name, None)


def retention_days() -> int:
    """Days events and deployment logs are kept; never below the SOP 13.1 floor."""
    days = getattr(settings, "PORTAL_AUDIT_RETENTION_DAYS", None)
    if days is None:
        raw = os.environ.get("PORTAL_AUDIT_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS))
        try:
            days = int(raw)
        except ValueError:
            raise ImproperlyConfigured(
                f"PORTAL_AUDIT_RETENTION_DAYS must be a whole number of days, not {raw!r}"
            ) from None
    if days < RETENTION_FLOOR_DAYS:
        raise ImproperlyConfigured(
            f"PORTAL_AUDIT_RETENTION_DAYS={days} is below the floor of {RETENTION_FLOOR_DAYS} "
            "days (SOP 13.1 keeps deployment logs for two years)"
        )
    return days


@dataclass
class PurgeResult:
    cutoff: datetime
    events_removed: int = 0
    log_lines_removed: int = 0
    checkpoints: list[AuditCheckpoint] = field(default_factory=list)


def audit_purge_expired(*, batch_size: int = 20_000) -> PurgeResult:
    """Remove events and deployment log lines older than the retention period.

    Each batch is one transaction: it holds the chain lock, checks that the events it
    removes still chain correctly (the purge never erases the evidence of tampering),
    deletes them and the expired log lines under ``portal.audit_purge``, records an
    ``AuditCheckpoint`` so the remaining chain still verifies, and writes an
    ``audit.purged`` event. Only the oldest events go, as one unbroken prefix.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    cutoff = clock.now() - timedelta(days=retention_days())
    result = PurgeResult(cutoff=cutoff)
    # The daily sign-in counts of days the trail no longer holds go with them.
    SignInDay.objects.filter(day__lt=cutoff.date()).delete()
    while True:
        removed, lines, checkpoint = _purge_batch(cutoff=cutoff, batch_size=batch_size)
        if not removed and not lines:
            return result
        result.events_removed += removed
        result.log_lines_removed += lines
        if checkpoint is not None:
            result.checkpoints.append(checkpoint)


@transaction.atomic
def _purge_batch(*, cutoff: datetime, batch_size: int):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_CHAIN_LOCK])
        # Lets the append-only triggers accept DELETE of rows older than the floor,
        # for this transaction only.
        cursor.execute("SET LOCAL portal.audit_purge = 'on'")

    previous = AuditCheckpoint.objects.order_by("-last_event_id").first()
    start = previous.last_event_id if previous else 0
    expected_prev = previous.last_hash if previous else GENESIS_HASH
    # Events are written in time order under the chain lock, so the expired ones are a
    # prefix by id; stop at the first young one all the same, so that a clock step
    # backwards can never punch a hole in the middle of the chain.
    first_young = (AuditEvent.objects.filter(id__gt=start, occurred_at__gte=cutoff)
                   .order_by("id").values_list("id", flat=True).first())
    expired = AuditEvent.objects.filter(id__gt=start)
    if first_young is not None:
        expired = expired.filter(id__lt=first_young)
    batch = list(expired.order_by("id").values("id", "hash", *HASHED_FIELDS)[:batch_size])

    for row in batch:
        if row["prev_hash"] != expected_prev or compute_hash(row) != row["hash"]:
            raise AuditError(
                f"retention purge stopped at event {row['id']}: the chain is broken there; "
                "run manage.py verify_audit"
            )
        expected_prev = row["hash"]

    with connection.cursor() as cursor:
        if batch:
            cursor.execute("DELETE FROM portal_auditevent WHERE id > %s AND id <= %s",
                           [start, batch[-1]["id"]])
            removed = cursor.rowcount
        else:
            removed = 0
    # The records other apps keep for the same period (deployment log lines), in this
    # transaction, under the same flag.
    lines = sum(purge(cutoff=cutoff, batch_size=batch_size) for purge in _purges.values())
    with connection.cursor() as cursor:
        # Off again at once, in case a caller's outer transaction goes on after the batch.
        cursor.execute("SET LOCAL portal.audit_purge = 'off'")
    if not removed and not lines:
        return 0, 0, None

    checkpoint = None
    if batch:
        last = batch[-1]
        checkpoint = AuditCheckpoint.objects.create(
            cutoff=cutoff, last_event_id=last["id"], last_hash=last["hash"],
            last_occurred_at=last["occurred_at"], events_removed=removed,
            log_lines_removed=lines,
        )
    audit_record(
        actor=System("retention purge"), action="audit.purged",
        obj=checkpoint, object_type="auditcheckpoint",
        object_id=checkpoint.pk if checkpoint else "",
        object_repr=str(checkpoint) if checkpoint else f"{lines} deployment log lines",
        after={
            "cutoff": cutoff, "retention_days": retention_days(),
            "events_removed": removed, "log_lines_removed": lines,
            "through_event": batch[-1]["id"] if batch else None,
            "through_hash": batch[-1]["hash"] if batch else None,
        },
    )
    return removed, lines, checkpoint
