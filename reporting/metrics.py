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

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import EmptyResultSet
from django.utils import timezone

from core import clock
from deployments.models import Deployment
from reporting import figures_sql

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
class Figures:
    """One period's (or application's) figures, as the SQL aggregate gives them."""

    start: datetime
    end: datetime
    deployments: int = 0
    completed: int = 0
    failures: int = 0
    lead_median: float | None = None  # seconds
    restored: int = 0
    restore_mean: float | None = None  # seconds

    @property
    def days(self) -> float:
        return max((self.end - self.start).total_seconds() / DAY, 1e-9)

    def as_dict(self) -> dict:
        frequency = round(self.completed / self.days, 4)
        lead = round(self.lead_median / HOUR, 2) if self.lead_median is not None else None
        mttr = round(self.restore_mean / HOUR, 2) if self.restore_mean is not None else None
        cfr = round(self.failures / self.deployments, 4) if self.deployments else None
        success = round(self.completed / self.deployments, 4) if self.deployments else None
        return {
            "start": self.start,
            "end": self.end,
            "deployments": self.deployments,
            "succeeded": self.completed,
            "failed": self.failures,
            "restored": self.restored,
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


# The figures in one SQL statement: one row for the totals, one per period and one per
# application (GROUPING SETS), so the cost is PostgreSQL's aggregate over the
# deployments that ended in the range, never a Python loop over them. The restoring
# success of each failure is an index look-up (deployment_running_idx).
_FIGURES_SQL = """
WITH base AS (
    SELECT d.id, d.application_id, d.environment_id, d.status, d.finished_at,
           width_bucket(d.finished_at, %s::timestamptz[]) AS bucket,""" \
    + figures_sql.DEPLOYMENT_FACTS + """
    FROM ({deployments}) d JOIN {release} r ON r.id = d.release_id
), """ + figures_sql.TIMED + """
SELECT GROUPING(bucket) AS all_buckets, GROUPING(application_id) AS all_apps,
       bucket, application_id, count(*),
       count(*) FILTER (WHERE completed),
       count(*) FILTER (WHERE failure),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lead_seconds)
           FILTER (WHERE completed AND lead_seconds >= 0),
       count(*) FILTER (WHERE failure AND restore_seconds IS NOT NULL),
       avg(restore_seconds) FILTER (WHERE failure AND restore_seconds IS NOT NULL)
FROM timed
GROUP BY GROUPING SETS ((), (bucket), (application_id))
"""


def _aggregates(queryset, since: datetime, until: datetime, starts: list[datetime]) -> list:
    """Rows of ``_FIGURES_SQL`` over the deployments of ``queryset`` that ended in
    [since, until). One query."""
    from django.db import connection

    from catalog.models import Release
    from deployments.models import DeploymentStep

    ended = (queryset.filter(kind=Deployment.Kind.DEPLOY, status__in=FINAL,
                             finished_at__gte=since, finished_at__lt=until)
             .order_by().values("id", "application_id", "environment_id", "status",
                                "finished_at", "release_id"))
    try:
        inner, inner_params = ended.query.sql_with_params()
    except EmptyResultSet:  # the reader may see no environment: nothing to count
        return []
    sql = _FIGURES_SQL.format(step=connection.ops.quote_name(DeploymentStep._meta.db_table),
                              release=connection.ops.quote_name(Release._meta.db_table),
                              deployment=connection.ops.quote_name(Deployment._meta.db_table),
                              deployments=inner)
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(starts), *inner_params])
        return cursor.fetchall()


def dora(queryset, *, since: datetime, until: datetime, period: str = "month",
         applications: dict[int, str] | None = None, rolled: dict | None = None) -> dict:
    """The figures over ``queryset`` (deployments the reader may see, already filtered
    by environment or application): totals, one entry per period, one per application.

    With ``rolled`` ({"environment_ids": [...] or None, "application_id": ... or None},
    the same limits as ``queryset``'s) whole days are read from the daily roll-ups
    (``reporting.rolled_figures``); without, every deployment of the range is read.
    """
    bounds = period_bounds(since, until, period)
    totals = Figures(since, until)
    periods = [Figures(start, end) for start, end in bounds]
    per_app: dict[int, Figures] = {}
    starts = [start for start, _ in bounds]
    if rolled is not None:
        from reporting.rolled_figures import rolled_rows

        rows = rolled_rows(queryset, since=since, until=until, starts=starts, **rolled)
    else:
        rows = _aggregates(queryset, since, until, starts)
    for (all_buckets, all_apps, bucket, app_id, deployments, completed, failures, lead,
         restored, restore) in rows:
        if all_buckets and all_apps:
            target = totals
        elif all_apps:
            if not 1 <= (bucket or 0) <= len(periods):
                continue
            target = periods[bucket - 1]
        else:
            target = per_app.setdefault(app_id, Figures(since, until))
        target.deployments, target.completed, target.failures = deployments, completed, failures
        target.lead_median = float(lead) if lead is not None else None
        target.restored = restored
        target.restore_mean = float(restore) if restore is not None else None
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
    now = now or clock.now()
    start = month_start(now)
    for _ in range(months - 1):
        start = (start - timedelta(days=1)).replace(day=1)
    return start, now
