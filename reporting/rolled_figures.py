"""The rows of the DORA figures from the daily roll-ups (``reporting.rollups``): whole
days come from ``DeploymentDay``, the pieces of days at the edges of the range (and
around a period boundary inside a day) from the deployments themselves, so the figures
equal the exact computation (``reporting.metrics._FIGURES_SQL``) for any range while
reading at most a few days of deployments.

The rows have the shape of ``reporting.metrics._aggregates``: (all periods, all
applications, period, application, deployments, completed, failures, median lead
seconds, restored, mean restore seconds).
"""

from __future__ import annotations

import bisect
import operator
from datetime import date, datetime, timedelta
from functools import reduce

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Q

from reporting import figures_sql, rollups

_ROLLED_SQL = """
WITH base AS (
    SELECT d.id, d.application_id, d.environment_id, d.status, d.finished_at,
           width_bucket(d.finished_at, %(starts)s::timestamptz[]) AS bucket,""" \
    + figures_sql.DEPLOYMENT_FACTS + """
    FROM ({deployments}) d JOIN {release} r ON r.id = d.release_id
), """ + figures_sql.TIMED + """, units AS (
    SELECT bucket, application_id, 1 AS deployments, completed::int AS completed,
           failure::int AS failures,
           CASE WHEN completed AND lead_seconds >= 0 THEN ARRAY[lead_seconds::float8]
                ELSE '{{}}'::float8[] END AS leads,
           (failure AND restore_seconds IS NOT NULL)::int AS restored,
           CASE WHEN failure THEN restore_seconds END AS restore_seconds
    FROM timed
    UNION ALL
    SELECT width_bucket(r.day::timestamp AT TIME ZONE %(tz)s, %(starts)s::timestamptz[]),
           r.application_id, r.deployments, r.completed, r.failures, r.lead_seconds,
           r.restored, r.restore_seconds
    FROM reporting_deploymentday r
    WHERE r.day = ANY(%(days)s::date[]) {cells}
)
SELECT GROUPING(bucket), GROUPING(application_id), bucket, application_id,
       COALESCE(sum(deployments), 0)::int, COALESCE(sum(completed), 0)::int,
       COALESCE(sum(failures), 0)::int, NULL::float8, COALESCE(sum(restored), 0)::int,
       sum(restore_seconds) / NULLIF(sum(restored), 0)
FROM units GROUP BY GROUPING SETS ((), (bucket), (application_id))
UNION ALL
SELECT GROUPING(bucket), GROUPING(application_id), bucket, application_id,
       NULL, NULL, NULL, percentile_cont(0.5) WITHIN GROUP (ORDER BY lead), NULL, NULL
FROM units CROSS JOIN LATERAL unnest(units.leads) AS lead
GROUP BY GROUPING SETS ((), (bucket), (application_id))
"""


def split_range(since: datetime, until: datetime, starts: list[datetime]
                ) -> tuple[list[date], list[tuple[datetime, datetime]]]:
    """The local days inside [since, until) that no period boundary cuts (read from the
    roll-ups), and the intervals left over (read from the deployments)."""
    inner = sorted(starts[1:])
    days: list[date] = []
    exact: list[tuple[datetime, datetime]] = []
    cursor = since
    day = rollups.local_day(since)
    day_begins = rollups.day_start(day)
    if day_begins < since:
        day += timedelta(days=1)
        day_begins = rollups.day_start(day)
    while True:
        day_ends = rollups.day_start(day + timedelta(days=1))
        if day_ends > until:
            break
        index = bisect.bisect_right(inner, day_begins)
        if index >= len(inner) or inner[index] >= day_ends:  # no boundary inside
            days.append(day)
            if cursor < day_begins:
                exact.append((cursor, day_begins))
            cursor = day_ends
        day, day_begins = day + timedelta(days=1), day_ends
    if cursor < until:
        exact.append((cursor, until))
    return days, exact


def rolled_rows(queryset, *, environment_ids: list[int] | None, application_id: int | None,
                since: datetime, until: datetime, starts: list[datetime]) -> list:
    """The figures' rows over the deployments of ``queryset`` (already limited to
    ``environment_ids``, None for all, and ``application_id``) that ended in
    [since, until). One query."""
    days, exact = split_range(since, until, starts)
    within = (reduce(operator.or_, [Q(finished_at__gte=a, finished_at__lt=b) for a, b in exact])
              if exact else Q(finished_at__gte=until, finished_at__lt=since))  # nothing
    ended = (queryset.filter(within, kind="deploy", status__in=rollups.FINAL)
             .order_by().values("id", "application_id", "environment_id", "status",
                                "finished_at", "release_id"))
    if environment_ids is not None and not environment_ids:
        return []
    try:
        inner, inner_params = ended.query.sql_with_params()
    except EmptyResultSet:
        return []
    params = {"starts": list(starts), "tz": rollups.tz_name(), "days": days}
    # The inner query's placeholders are positional: name them for the outer statement.
    names = []
    for index, value in enumerate(inner_params):
        params[f"p{index}"] = value
        names.append(f"%(p{index})s")
    inner = inner.replace("%%", "\x00") % tuple(names)
    inner = inner.replace("\x00", "%%")
    cells = ""
    if environment_ids is not None:
        cells += " AND r.environment_id = ANY(%(envs)s)"
        params["envs"] = list(environment_ids)
    if application_id is not None:
        cells += " AND r.application_id = %(app)s"
        params["app"] = application_id
    sql = _ROLLED_SQL.format(deployments=inner, cells=cells, **rollups.tables())
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return _merge(rows)


def _merge(rows: list) -> list:
    """The counts and the medians come in separate rows of one statement: one row per
    group, as ``reporting.metrics._aggregates`` gives them."""
    merged: dict[tuple, list] = {}
    for row in rows:
        key = (row[0], row[1], row[2], row[3])
        if row[4] is not None:
            merged.setdefault(key, list(row))[4:7] = row[4:7]
            merged[key][8:10] = row[8:10]
        else:
            merged.setdefault(key, list(key) + [0, 0, 0, None, 0, None])[7] = row[7]
    return [tuple(row) for row in merged.values()]
