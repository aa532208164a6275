"""Writing and tampering with audit events in tests."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

from django.db import connection, transaction
from django.utils import timezone

from portal.audit import System, audit_record


def record(action: str = "thing.done", *, days_ago: float = 0, **fields):
    """Append one event through the real writer, optionally dated ``days_ago``."""
    when = timezone.now() - timedelta(days=days_ago)
    with mock.patch("django.utils.timezone.now", return_value=when), transaction.atomic():
        return audit_record(actor=System("test"), action=action, object_type="thing",
                            object_id=fields.pop("object_id", "1"),
                            object_repr=fields.pop("object_repr", "a thing"), **fields)


def sql(statement: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.rowcount


@contextmanager
def triggers_disabled(table: str = "portal_auditevent"):
    """Tamper as a database owner would: without the append-only trigger."""
    sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    try:
        yield
    finally:
        sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")
