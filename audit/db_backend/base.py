"""Django's PostgreSQL backend, with the audit chain sealed at the end of the transaction.

``audit.trail.audit_record`` does not write an event where it is called: it hands the
event to the connection, which links it into the chain and inserts it just before the
transaction commits (``audit.trail.seal``), after the transaction's deferred foreign-key
checks have run. The chain's advisory lock is therefore the last lock a transaction
takes, and its holder waits for nothing but its own inserts and the commit: a request
holding row locks may wait for the chain, but the chain's holder never waits for a
row, so the two can no longer deadlock.

Events recorded inside a savepoint that rolls back are dropped with it, as the rows
would have been (the same bookkeeping Django keeps for ``on_commit``). Inside a test
case's own transaction, which never commits and has one connection (nothing to
deadlock with), an event is sealed where it is recorded, so the test sees it at once.

``audit_seals`` counts the times this connection sealed events into the chain: every
state change is a service that writes its audit event, so a request that died of a
deadlock is retried (``core.transient``) only when the count did not move, i.e. when
no state change of the request was committed before it died.
"""

from __future__ import annotations

from django.db.backends.postgresql import base


def _in_a_test_case(blocks) -> bool:
    # ``_from_testcase`` marks the atomic blocks Django's TestCase (and pytest-django's
    # ``db`` fixture) wraps a test in; no other code sets it.
    return bool(blocks) and getattr(blocks[0], "_from_testcase", False)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit_pending: list[tuple[set, object]] = []
        self.audit_seals = 0

    # --- what audit.trail calls -----------------------------------------------------

    def audit_defer(self, event) -> bool:
        """Keep ``event`` until the transaction commits; False when it must be sealed
        now (inside a test case's transaction, which never commits)."""
        if _in_a_test_case(self.atomic_blocks):
            self.audit_seals += 1
            return False
        self.audit_pending.append((set(self.savepoint_ids), event))
        return True

    def _seal_pending(self) -> None:
        from audit.trail import seal

        events = [event for _, event in self.audit_pending]
        self.audit_pending = []
        self.audit_seals += 1
        seal(events)

    # --- transaction boundaries ----------------------------------------------------

    def commit(self):
        if self.audit_pending:
            with self.cursor() as cursor:
                # Foreign keys are checked at commit (Django makes them DEFERRABLE
                # INITIALLY DEFERRED), and each check locks the row it points at (FOR
                # KEY SHARE), which may wait for a transaction holding that row FOR
                # UPDATE. Checked here, before the chain's lock, a wait like that can no
                # longer happen while the chain is held.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            self._seal_pending()
        super().commit()

    def rollback(self):
        self.audit_pending = []
        super().rollback()

    def close(self):
        self.audit_pending = []
        super().close()

    def savepoint_rollback(self, sid):
        super().savepoint_rollback(sid)
        self.audit_pending = [(sids, event) for sids, event in self.audit_pending
                              if sid not in sids]
