"""Six months of demo history, made through the portal's own services.

``manage.py seed_demo --history`` (and the first ``make run``) builds an organisation
that has been using the portal for a while: four applications beside the storefront,
releases promoted Development -> Staging -> Production with approvals and comments,
rejections, a failed deployment, a canary rolled back automatically with its verdict, a
manual rollback, emergency changes with their post-implementation reviews, scheduled
changes, a year-end freeze, and changes waiting now in every approver's inbox.

Nothing is written around the services: every change, decision, checklist tick and
deployment goes through ``approvals.services``, ``deployments.services`` and the CI
hook service, with the same permission checks, gates, windows and audit events as a
person's clicks. Two things differ from a live run, and only while the history is made,
both through the portal's plug-in points:

- the clock: ``HistoryClock`` installs a moment in the past that only moves forward as
  the portal's clock (``core.clock.use``), which services and the model fields that
  default to the time read, so the audit chain is written in time order and in id
  order, and verifies like any other;
- the work: deployments are run in this process by the engine
  (``deployments.services.deployment_run``) with ``HistoryExecutor``, an executor that
  touches no machine (``register_executor``), and ``HistoryProvider``, which reports the
  health figures a good or a bad release would have shown
  (``register_health_provider``); what the services queue is held (``core.dispatch``)
  and notifications are sent after each step, at its time. Steps, verdicts, rollbacks
  and their audit events are the engine's own.

Modules: ``clock`` (the clock and the timeline), ``plan`` (the organisation), ``story``
(the stories, ``Generator``), ``work`` (executor, provider, engine), ``background``
(`make run`'s background run and its banner).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction

from core import clock as portal_clock
from demo.history.background import banner, marker, start_in_background
from demo.history.clock import HistoryClock
from demo.history.plan import History, HistoryError, already_made, start_of
from demo.history.story import Generator
from demo.history.work import engine_for_history, send_held_notifications


def generate(*, size: str = "full", now: datetime | None = None) -> History:
    """Make the demo history through the services (see the module's description)."""
    try:
        return _generate(size=size, now=now or portal_clock.now())
    finally:
        marker().unlink(missing_ok=True)


def _generate(*, size: str, now: datetime) -> History:
    generator = Generator(now=now, size=size)
    with connection.cursor() as cursor:
        # Thousands of small commits: none waits for its WAL flush. A crash meanwhile
        # loses the last few, never consistency; the setting ends with the session.
        cursor.execute("SET synchronous_commit TO off")
    with HistoryClock(generator.start) as clock, engine_for_history():
        generator.clock = clock
        with transaction.atomic():
            generator.setup()
        generator.plan()
        generator.timeline.run(clock, generator.history, until=now - timedelta(minutes=10),
                               after_step=send_held_notifications)
        if clock.current >= now:
            raise HistoryError("the demo history ran past the present; make it smaller")
    return generator.history


__all__ = ["History", "HistoryClock", "HistoryError", "already_made", "banner", "generate",
           "marker", "start_in_background", "start_of"]
