"""DORA metrics (SOP 12.1): deployment frequency, lead time for changes, time to
restore service, change failure rate and deployment success rate, by application,
environment and month, each with the DORA performance band it falls in.

Definitions (docs/metrics.md says the same for people):

- A *deployment* is a run of kind ``deploy`` that ended succeeded, failed or rolled
  back; cancelled runs changed nothing and count nowhere. Rollback runs are how
  service is restored: they count for the time to restore only.
- *Completed*: the run went through all its steps (status succeeded, or succeeded
  and was rolled back by hand later: no step of it failed).
- *Failure*: a deployment that ended failed or rolled back (automatically or by
  hand): the change degraded the environment.
- Deployment frequency: completed deployments per day of the period.
- Lead time for changes: median time from the release's commit (its registration
  when CI gave no commit time) to the end of its completed deployment.
- Time to restore (MTTR): mean time from a failure's end to the end of the first
  successful deployment or rollback of that application in that environment after it.
- Change failure rate: failures / deployments. Success rate: completed / deployments.

A period's figures count the deployments that *ended* in it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from deployments.models import Deployment

HOUR = 3600.0
DAY = 24 * HOUR

FINAL = (Deployment.Status.SUCCEEDED, Deployment.Status.FAILED, Deployment.Status.ROLLED_BACK)
FAILURE = {Deployment.Status.FAILED, Deployment.Status.ROLLED_BACK}

# DORA performance bands (State of DevOps report 2023), best first. Each entry is
# (band, test on the figure); the first test that holds names the band.
BANDS = ("elite", "high", "medium", "low")
BAND_RULES = {
    # Deployments per day: on demand (daily or more), weekly, monthly, less.
    "deployment_frequency": [("elite", lambda v: v >= 1.0), ("high", lambda v: v >= 1 / 7),
                             ("medium", lambda v: v >= 1 / 30), ("low", lambda v: True)],
    # Hours: under a day, under a week, under a month, more.
    "lead_time": [("elite", lambda v: v < 24), ("high", lambda v: v < 24 * 7),
                  ("medium", lambda v: v < 24 * 30), ("low", lambda v: True)],
    # Hours: under an hour, under a day, under a week, more.
    "time_to_restore": [("elite", lambda v: v < 1), ("high", lambda v: v < 24),
                        ("medium", lambda v: v < 24 * 7), ("low", lambda v: True)],
    # Share of deployments: 5%, 10%, 15%, more.
    "change_failure_rate": [("elite", lambda v: v <= 0.05), ("high", lambda v: v <= 0.10),
                            ("medium", lambda v: v <= 0.15), ("low", lambda v: True)],
}
BAND_LABELS = {
    "deployment_frequency": {"elite": "On demand (daily or more)", "high": "Daily to weekly",
                             "medium": "Weekly to monthly", "low": "Less than monthly"},
    "lead_time": {"elite": "Less than a day", "high": "A day to a week",
                  "medium": "A week to a month", "low": "More than a month"},
    "time_to_restore": {"elite": "Less than an hour", "high": "Less than a day",
                        "medium": "A day to a week", "low": "More than a week"},
    "change_failure_rate": {"elite": "5% or less", "high": "10% or less",
                            "medium": "15% or less", "low": "More than 15%"},
}


def band(metric: str, value: float | None) -> str | None:
    """The DORA band ``value`` of ``metric`` falls in, or None without a figure."""
    if value is None:
        return None
    for name, holds in BAND_RULES[metric]:
        if holds(value):
            return name
    return None  # pragma: no cover - the last rule always holds


@dataclass
class Row:
    """One finished deployment, as the computation needs it."""

    id: int
    application_id: int
    environment_id: int
    kind: str
    status: str
    started_at: datetime | None
    finished_at: datetime
    committed_at: datetime | None
    failed_steps: int
    restored_at: datetime | None = None

    @property
    def is_deploy(self) -> bool:
        return self.kind == Deployment.Kind.DEPLOY

    @property
    def failure(self) -> bool:
        return self.is_deploy and self.status in FAILURE

    @property
    def completed(self) -> bool:
        return self.is_deploy and (self.status == Deployment.Status.SUCCEEDED or (
            self.status == Deployment.Status.ROLLED_BACK and self.failed_steps == 0))


@dataclass
class Figures:
    start: datetime
    end: datetime
    deployments: int = 0
    completed: int = 0
    failures: int = 0
    lead_times: list[float] = field(default_factory=list)  # seconds
    restore_times: list[float] = field(default_factory=list)  # seconds

    @property
    def days(self) -> float:
        return max((self.end - self.start).total_seconds() / DAY, 1e-9)

    def as_dict(self) -> dict:
        frequency = round(self.completed / self.days, 4)
        lead = (round(statistics.median(self.lead_times) / HOUR, 2)
                if self.lead_times else None)
        mttr = (round(statistics.fmean(self.restore_times) / HOUR, 2)
                if self.restore_times else None)
        cfr = round(self.failures / self.deployments, 4) if self.deployments else None
        success = round(self.completed / self.deployments, 4) if self.deployments else None
        return {
            "start": self.start,
            "end": self.end,
            "deployments": self.deployments,
            "succeeded": self.completed,
            "failed": self.failures,
            "restored": len(self.restore_times),
            "deployment_frequency_per_day": frequency,
            "deployments_per_week": round(frequency * 7, 2),
            "lead_time_hours": lead,
            "mttr_hours": mttr,
            "change_failure_rate": cfr,
            "success_rate": success,
            "bands": {
                "deployment_frequency": band("deployment_frequency", frequency)
                if self.deployments else None,
                "lead_time": band("lead_time", lead),
                "time_to_restore": band("time_to_restore", mttr),
                "change_failure_rate": band("change_failure_rate", cfr),
            },
        }

    def add(self, row: Row) -> None:
        if not row.is_deploy:
            return
        self.deployments += 1
        if row.completed:
            self.completed += 1
            if row.committed_at is not None:
                lead = (row.finished_at - row.committed_at).total_seconds()
                if lead >= 0:
                    self.lead_times.append(lead)
        if row.failure:
            self.failures += 1
            if row.restored_at is not None:
                self.restore_times.append((row.restored_at - row.finished_at).total_seconds())


def month_start(moment: datetime) -> datetime:
    local = timezone.localtime(moment)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(moment: datetime) -> datetime:
    if moment.month == 12:
        return moment.replace(year=moment.year + 1, month=1)
    return moment.replace(month=moment.month + 1)


def period_bounds(since: datetime, until: datetime, period: str) -> list[tuple[datetime, datetime]]:
    """Calendar months (or weeks from ``since``) covering [since, until)."""
    bounds = []
    if period == "month":
        current = month_start(since)
        while current < until:
            following = next_month(current)
            bounds.append((max(current, since), min(following, until)))
            current = following
    else:
        step = timedelta(days=7 if period == "week" else 1)
        current = since
        while current < until:
            bounds.append((current, min(current + step, until)))
            current += step
    return bounds


def _rows(queryset, since: datetime, until: datetime) -> list[Row]:
    """Deployments that ended in [since, until), plus the successes after ``until``
    that tell when a failure inside it was restored. One query."""
    values = (queryset.filter(status__in=FINAL, finished_at__gte=since)
              .annotate(failed_steps=Count("steps", filter=Q(
                  steps__status="failed")))
              .order_by("finished_at", "id")
              .values_list("id", "application_id", "environment_id", "kind", "status",
                           "started_at", "finished_at", "release__committed_at",
                           "release__created_at", "failed_steps"))
    rows = [Row(id=v[0], application_id=v[1], environment_id=v[2], kind=v[3], status=v[4],
                started_at=v[5], finished_at=v[6], committed_at=v[7] or v[8],
                failed_steps=v[9]) for v in values]
    # Restoration: the first success (deployment or rollback) of the same application
    # in the same environment that ended after the failure.
    waiting: dict[tuple[int, int], list[Row]] = {}
    for row in rows:
        key = (row.application_id, row.environment_id)
        if row.status == Deployment.Status.SUCCEEDED:
            for failed in waiting.pop(key, []):
                failed.restored_at = row.finished_at
        elif row.failure:
            waiting.setdefault(key, []).append(row)
    return [row for row in rows if row.finished_at < until]


def dora(queryset, *, since: datetime, until: datetime, period: str = "month",
         applications: dict[int, str] | None = None) -> dict:
    """The figures over ``queryset`` (deployments the reader may see, already filtered
    by environment or application): totals, one entry per period, one per application.
    """
    rows = _rows(queryset, since, until)
    totals = Figures(since, until)
    periods = [Figures(start, end) for start, end in period_bounds(since, until, period)]
    per_app: dict[int, Figures] = {}
    for row in rows:
        totals.add(row)
        for figures in periods:
            if figures.start <= row.finished_at < figures.end:
                figures.add(row)
                break
        per_app.setdefault(row.application_id, Figures(since, until)).add(row)
    by_application = []
    for app_id, figures in per_app.items():
        if not figures.deployments:
            continue
        name = (applications or {}).get(app_id, str(app_id))
        by_application.append({"application": name, **figures.as_dict()})
    by_application.sort(key=lambda item: item["application"])
    return {
        "since": since,
        "until": until,
        "period": period,
        "totals": totals.as_dict(),
        "periods": [figures.as_dict() for figures in periods],
        "by_application": by_application,
    }


def default_range(now: datetime | None = None, months: int = 6) -> tuple[datetime, datetime]:
    """The last ``months`` calendar months up to now, this one included."""
    now = now or timezone.now()
    start = month_start(now)
    for _ in range(months - 1):
        start = (start - timedelta(days=1)).replace(day=1)
    return start, now
