"""Daily roll-ups of ended deployments (``reporting.models.DeploymentDay``): kept as
deployments end, rebuilt from the deployments at will, and read by the DORA figures.

A day of one application in one environment is always *recomputed* from its
deployments, never incremented, so writing it twice gives the same row (idempotent)
and a lost update is healed by the next one or by ``rebuild_deployment_rollups``.

When a deployment ends (or a success is rolled back by hand later) three things may
change: its own day; the time to restore of the failures before it that it restores
(a success), or that it restored until now (a success rolled back); nothing after
it. So the days refreshed run from the first failure since the previous success of
that application there to the deployment's own day.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from deployments.models import Deployment
from reporting import figures_sql

FINAL = ("succeeded", "failed", "rolled_back")
FAILURE = ("failed", "rolled_back")

# One row per application, environment and local day of the deployments chosen by
# {where}: the same definitions as reporting.metrics._FIGURES_SQL (completed, failure,
# lead time, the first later success that restores a failure).
_DAYS_SQL = """
WITH base AS (
    SELECT d.id, d.application_id, d.environment_id, d.status, d.finished_at,
           (d.finished_at AT TIME ZONE %(tz)s)::date AS day,""" \
    + figures_sql.DEPLOYMENT_FACTS + """
    FROM {deployment} d JOIN {release} r ON r.id = d.release_id
    WHERE d.kind = 'deploy' AND d.status IN ('succeeded', 'failed', 'rolled_back')
      AND d.finished_at IS NOT NULL {where}
), """ + figures_sql.TIMED + """
INSERT INTO reporting_deploymentday (day, application_id, environment_id, deployments,
    completed, failures, lead_seconds, restored, restore_seconds)
SELECT day, application_id, environment_id, count(*),
       count(*) FILTER (WHERE completed),
       count(*) FILTER (WHERE failure),
       COALESCE(array_agg(lead_seconds::float8 ORDER BY lead_seconds)
                FILTER (WHERE completed AND lead_seconds >= 0), '{{}}'),
       count(*) FILTER (WHERE failure AND restore_seconds IS NOT NULL),
       COALESCE(sum(restore_seconds) FILTER (WHERE failure AND restore_seconds IS NOT NULL), 0)
FROM timed
GROUP BY day, application_id, environment_id
ON CONFLICT (application_id, environment_id, day) DO UPDATE SET
    deployments = EXCLUDED.deployments, completed = EXCLUDED.completed,
    failures = EXCLUDED.failures, lead_seconds = EXCLUDED.lead_seconds,
    restored = EXCLUDED.restored, restore_seconds = EXCLUDED.restore_seconds
"""


def tz_name() -> str:
    return settings.TIME_ZONE


def tables() -> dict:
    """The table names the SQL here reads, quoted."""
    from catalog.models import Release
    from deployments.models import DeploymentStep

    quote = connection.ops.quote_name
    return {"deployment": quote(Deployment._meta.db_table),
            "step": quote(DeploymentStep._meta.db_table),
            "release": quote(Release._meta.db_table)}


def day_start(day: date) -> datetime:
    """The moment ``day`` begins in ``PORTAL_TIME_ZONE``."""
    return timezone.make_aware(datetime.combine(day, time()), timezone.get_default_timezone())


def local_day(moment: datetime) -> date:
    return timezone.localtime(moment, timezone.get_default_timezone()).date()


def refresh_days(*, application_id: int, environment_id: int, first: date, last: date) -> None:
    """Recompute the roll-ups of one application in one environment for the days
    ``first`` to ``last`` (both included) from its deployments. Idempotent."""
    since, until = day_start(first), day_start(last + timedelta(days=1))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM reporting_deploymentday WHERE application_id = %s "
            "AND environment_id = %s AND day BETWEEN %s AND %s",
            [application_id, environment_id, first, last])
        where = ("AND d.application_id = %(app)s AND d.environment_id = %(env)s "
                 "AND d.finished_at >= %(since)s AND d.finished_at < %(until)s")
        cursor.execute(_DAYS_SQL.format(where=where, **tables()),
                       {"tz": tz_name(), "app": application_id, "env": environment_id,
                        "since": since, "until": until})


def rebuild(*, since: date | None = None) -> int:
    """Recompute every roll-up (or those from ``since`` on) from the deployments: after
    an upgrade, or to heal what a failed update left. Returns the rows written."""
    from reporting.models import DeploymentDay

    with transaction.atomic(), connection.cursor() as cursor:
        if since is None:
            cursor.execute("DELETE FROM reporting_deploymentday")
            cursor.execute(_DAYS_SQL.format(where="", **tables()), {"tz": tz_name()})
        else:
            cursor.execute("DELETE FROM reporting_deploymentday WHERE day >= %s", [since])
            cursor.execute(_DAYS_SQL.format(where="AND d.finished_at >= %(since)s", **tables()),
                           {"tz": tz_name(), "since": day_start(since)})
        return DeploymentDay.objects.count()


def deployment_ended(*, deployment: Deployment) -> None:
    """Keep the roll-ups true after ``deployment`` became final (or changed its final
    status): call it in the transaction that ends it."""
    if deployment.status not in FINAL or deployment.finished_at is None:
        return
    cell = Deployment.objects.filter(application_id=deployment.application_id,
                                     environment_id=deployment.environment_id)
    previous = (cell.filter(status="succeeded", finished_at__lt=deployment.finished_at)
                .exclude(pk=deployment.pk).order_by("-finished_at", "-id")
                .values_list("finished_at", flat=True).first())
    failures = cell.filter(kind="deploy", status__in=FAILURE,
                           finished_at__lt=deployment.finished_at)
    if previous is not None:
        failures = failures.filter(finished_at__gte=previous)
    first_failure = failures.order_by("finished_at").values_list("finished_at",
                                                                 flat=True).first()
    start = min(first_failure or deployment.finished_at, deployment.finished_at)
    refresh_days(application_id=deployment.application_id,
                 environment_id=deployment.environment_id,
                 first=local_day(start), last=local_day(deployment.finished_at))
