"""Maintenance windows and freezes in time: is a moment allowed, and when is the next one."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from approvals.models import Freeze, MaintenanceWindow


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def window_spans(window: MaintenanceWindow, around: datetime) -> list[tuple[datetime, datetime]]:
    """The window's occurrences from a day before ``around`` to eight days after it."""
    tz = _zone(window.timezone)
    local = around.astimezone(tz)
    spans = []
    for offset in range(-1, 9):
        day = local.date() + timedelta(days=offset)
        if day.weekday() != window.weekday:
            continue
        start = datetime.combine(day, window.start_time, tz)
        end = datetime.combine(day, window.end_time, tz)
        if end <= start:
            end += timedelta(days=1)
        spans.append((start, end))
    return spans


def current_window(windows: Iterable[MaintenanceWindow], at: datetime):
    """(start, end) of the window open at ``at``, or None."""
    for window in windows:
        for start, end in window_spans(window, at):
            if start <= at < end:
                return start, end
    return None


def next_window_start(windows: Iterable[MaintenanceWindow], at: datetime) -> datetime | None:
    starts = [start for w in windows for start, _ in window_spans(w, at) if start > at]
    return min(starts) if starts else None


def freeze_spans(freeze: Freeze, around: datetime) -> list[tuple[datetime, datetime]]:
    if not freeze.recurs_yearly:
        return [(freeze.starts_at, freeze.ends_at)]
    spans = []
    for year in (around.year - 1, around.year, around.year + 1):
        shift = year - freeze.starts_at.year
        try:
            start = freeze.starts_at.replace(year=freeze.starts_at.year + shift)
            end = freeze.ends_at.replace(year=freeze.ends_at.year + shift)
        except ValueError:  # 29 February in a year without one
            continue
        spans.append((start, end))
    return spans


def active_freeze(freezes: Iterable[Freeze], at: datetime):
    """(freeze, its end) in force at ``at``, or None."""
    for freeze in freezes:
        for start, end in freeze_spans(freeze, at):
            if start <= at < end:
                return freeze, end
    return None


def earliest_allowed(*, at: datetime, windows: list[MaintenanceWindow], freezes: list[Freeze],
                     requires_window: bool, passes_freeze: bool) -> datetime | None:
    """The first moment from ``at`` on that no window or freeze forbids; None if never."""
    moment = at
    for _ in range(100):
        moved = False
        if not passes_freeze:
            frozen = active_freeze(freezes, moment)
            if frozen:
                moment, moved = frozen[1], True
        if requires_window and not current_window(windows, moment):
            nxt = next_window_start(windows, moment)
            if nxt is None:
                return None
            moment, moved = nxt, True
        if not moved:
            return moment
    return None
