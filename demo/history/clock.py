"""The history's time: a clock in the past that only moves forward, and the timeline of
steps it runs in time order."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import transaction

from core import clock as portal_clock
from core.errors import DomainError

LONDON = ZoneInfo("Europe/London")


class HistoryClock:
    """The portal's clock (``core.clock``) in the past, moving forward by ``tick`` at
    every reading.

    Inside the ``with`` block every service, audit event and model default reads this
    clock; ``at`` moves it forward to a moment (never backwards, so the audit chain's
    times rise with its ids).
    """

    def __init__(self, start: datetime, tick: timedelta = timedelta(seconds=2)) -> None:
        self.current = start.astimezone(UTC)
        self.tick = tick
        self._stack: ExitStack | None = None

    def now(self) -> datetime:
        value = self.current
        self.current = value + self.tick
        return value

    def at(self, moment: datetime) -> datetime:
        # In UTC, as the real clock reads: an event's hash covers its time as written.
        moment = moment.astimezone(UTC)
        if moment > self.current:
            self.current = moment
        return self.current

    def __enter__(self) -> HistoryClock:
        stack = ExitStack()
        stack.enter_context(portal_clock.use(self.now))
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


class Timeline:
    """Steps of every application's story, run in time order."""

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = itertools.count()

    def add(self, when: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def run(self, clock: HistoryClock, history, *, until: datetime,
            after_step: Callable[[], None] = lambda: None) -> None:
        while self._heap:
            when, _, action = heapq.heappop(self._heap)
            if max(when, clock.current) >= until:
                continue  # a story that would go on past the present stops here
            clock.at(when)
            # One transaction per step of the story: the workers and beat of a running
            # portal never see a historical change half-way (a deployment queued, a
            # schedule due) and act on it in the present.
            with transaction.atomic():
                try:
                    action()
                except DomainError as exc:
                    # A service refused (and audited its refusal where it does): nothing
                    # was bypassed; the story of that change ends there.
                    history.problems.append(f"{when:%Y-%m-%d %H:%M}: {exc.detail}")
            # What the step queued after its commit (its notifications), at its time.
            after_step()


def local(day: datetime, hour: int, minute: int = 0) -> datetime:
    """``day`` at a London wall-clock time."""
    local = day.astimezone(LONDON)
    return datetime.combine(local.date(), time(hour, minute), tzinfo=LONDON).astimezone(UTC)


def working(moment: datetime, rng: random.Random) -> datetime:
    """``moment``, or the next working hour after it in London (people request in the day)."""
    local = moment.astimezone(LONDON)
    if local.hour >= 18:
        local = (local + timedelta(days=1)).replace(hour=9)
    elif local.hour < 9:
        local = local.replace(hour=9)
    while local.weekday() >= 5:
        local = (local + timedelta(days=1)).replace(hour=9)
    return local.replace(minute=rng.randint(0, 59)).astimezone(UTC)
