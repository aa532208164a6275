"""Read queries for deployments, shared by pages and the API."""

from __future__ import annotations

from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

# Which releases a user sees is the catalogue's rule; pages and the API of the engine
# and of the approval workflow read it here too.
from catalog.selectors import releases_visible_to as releases_visible_to
from catalog.selectors import visible_environment_ids
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep
from deployments.services import HOLDING, irreversible_since, queue_head, queue_position


def deployments_visible_to(user) -> QuerySet[Deployment]:
    qs = Deployment.objects.select_related(
        "application", "environment", "release", "started_by"
    )
    env_ids = visible_environment_ids(user)
    if env_ids is not None:
        qs = qs.filter(environment_id__in=env_ids)
    return qs


def releases_deployed_in(environment_ids) -> Exists:
    """Over releases: deployed in one of ``environment_ids``. The catalogue's
    ``releases_visible_to`` asks it (registered in ``DeploymentsConfig.ready``)."""
    return Exists(Deployment.objects.filter(release_id=OuterRef("pk"),
                                            environment_id__in=environment_ids))


def latest_per_application_environment(
        *, environment_ids, application_ids=None, statuses=None, exclude_statuses=None,
        by: str = "created") -> dict[tuple[int, int], tuple[int, str]]:
    """{(application id, environment id): (id, status) of its latest deployment} among
    those with ``statuses`` (or not in ``exclude_statuses``), latest by ``created``
    (created_at, id) or ``finished`` (finished_at, id). One query: an index-backed
    LATERAL look-up per pair of application and environment, so its cost follows the
    number of pairs, not of deployments (``deployment_app_env_recent_idx``,
    ``deployment_running_idx``)."""
    from catalog.models import Application, Environment

    order = {"created": "d.created_at DESC, d.id DESC",
             "finished": "d.finished_at DESC, d.id DESC"}[by]
    where, params = [], []
    if statuses is not None:
        where.append("d.status = ANY(%s)")
        params.append([str(s) for s in statuses])
    if exclude_statuses is not None:
        where.append("NOT (d.status = ANY(%s))")
        params.append([str(s) for s in exclude_statuses])
    outer, outer_params = ["e.id = ANY(%s)"], [list(environment_ids)]
    if application_ids is not None:
        outer.append("a.id = ANY(%s)")
        outer_params.append(list(application_ids))
    sql = (
        f'SELECT a.id, e.id, latest.id, latest.status FROM "{Application._meta.db_table}" a '
        f'CROSS JOIN "{Environment._meta.db_table}" e '
        f'CROSS JOIN LATERAL (SELECT d.id, d.status FROM "{Deployment._meta.db_table}" d '
        f"WHERE d.application_id = a.id AND d.environment_id = e.id"
        f"{''.join(' AND ' + w for w in where)} ORDER BY {order} LIMIT 1) latest "
        f"WHERE {' AND '.join(outer)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *outer_params])
        return {(app_id, env_id): (pk, status)
                for app_id, env_id, pk, status in cursor.fetchall()}


def rollback_options(application, environment) -> list[dict]:
    """Earlier releases that succeeded in ``environment``, newest first, and whether
    rolling back to each is safe (no irreversible migration applied since)."""
    latest = (Deployment.objects.filter(application=application, environment=environment)
              .exclude(status=Deployment.Status.QUEUED).order_by("-created_at", "-id").first())
    if latest is None:
        return []
    options, seen = [], {latest.release_id}
    earlier = list(Deployment.objects.filter(application=application, environment=environment,
                                              status=Deployment.Status.SUCCEEDED,
                                              created_at__lt=latest.created_at)
                   .select_related("release").order_by("-created_at", "-id")[:20])
    # The migrations every option would cross, read once for the oldest of them: a
    # fixed number of queries however long the history (three).
    applied = irreversible_since(latest, earlier[-1].created_at) if earlier else []
    for deployment in earlier:
        if deployment.release_id in seen:
            continue
        seen.add(deployment.release_id)
        crossing = sorted({name for at, name in applied if at > deployment.created_at})
        options.append({
            "version": deployment.release.version, "release": deployment.release,
            "safe": not crossing,
            "reason": ("crosses the irreversible migration " + ", ".join(crossing))
            if crossing else "no irreversible migration since",
        })
    return options


def target_progress(deployment: Deployment) -> list[dict]:
    """Per target: its steps done of total, the step running now, whether it serves the
    new version yet. Reads the deployment's prefetched steps (no query per target)."""
    rows: dict[int, dict] = {}
    for step in deployment.steps.all():
        if step.target_id is None:
            continue
        row = rows.setdefault(step.target_id, {
            "name": step.target.name, "done": 0, "total": 0, "phase": step.phase,
            "current": "", "failed": False, "on_new_version": False})
        row["total"] += 1
        if step.status in (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED):
            row["done"] += 1
            if step.name in ("deploy", "switch"):
                row["on_new_version"] = True
        elif step.status == DeploymentStep.Status.RUNNING:
            row["current"] = step.title
        elif step.status == DeploymentStep.Status.FAILED:
            row["failed"] = True
            row["current"] = step.title
    for row in rows.values():
        row["percent"] = int(row["done"] * 100 / row["total"]) if row["total"] else 0
    return sorted(rows.values(), key=lambda r: r["name"])


def deployment_verdicts(deployment: Deployment) -> list[AnalysisVerdict]:
    return list(AnalysisVerdict.objects.filter(deployment=deployment).order_by("created_at",
                                                                                 "id"))


def related_rollbacks(deployment: Deployment) -> list[Deployment]:
    return list(Deployment.objects.filter(rolled_back_deployment=deployment)
                .select_related("release").order_by("created_at"))


def queue_state(deployment: Deployment) -> dict:
    """Where a deployment stands in its application's queue in its environment:
    ``position`` (1 = next to start; None when not waiting), ``waiting_for`` (the id
    of the deployment holding the target, None when not waiting) and that ``head``."""
    position = queue_position(deployment)
    if position is None:
        return {"position": None, "waiting_for": None, "head": None}
    head = queue_head(deployment.application_id, deployment.environment_id)
    return {"position": position, "waiting_for": head.pk if head else None, "head": head}


def queued_deployments(environment_ids=None) -> list[dict]:
    """Deployments waiting in a queue, with their position and what they wait for,
    for the dashboard and the change page (two queries)."""
    waiting = (Deployment.objects.filter(status=Deployment.Status.QUEUED, holds_target=False)
               .select_related("application", "environment", "release")
               .order_by("environment__order", "application__slug", "created_at", "id"))
    if environment_ids is not None:
        waiting = waiting.filter(environment_id__in=environment_ids)
    waiting = list(waiting)
    if not waiting:
        return []
    heads = {(d.application_id, d.environment_id): d for d in Deployment.objects.filter(
        holds_target=True, status__in=HOLDING,
        application_id__in={w.application_id for w in waiting},
        environment_id__in={w.environment_id for w in waiting}).select_related("release")}
    rows, seen = [], {}
    # Rollbacks go first in a queue, then first in first out (deployments.services.queue).
    waiting.sort(key=lambda d: (d.environment.order, d.application.slug,
                                d.kind != Deployment.Kind.ROLLBACK, d.created_at, d.pk))
    for d in waiting:
        key = (d.application_id, d.environment_id)
        seen[key] = seen.get(key, 0) + 1
        rows.append({"deployment": d, "position": seen[key], "waiting_for": heads.get(key)})
    return rows


# The DORA definitions (reporting.metrics): what counts as a deployment, and a failure.
DORA_FINAL = (Deployment.Status.SUCCEEDED, Deployment.Status.FAILED,
              Deployment.Status.ROLLED_BACK)
DORA_FAILURE = (Deployment.Status.FAILED, Deployment.Status.ROLLED_BACK)


def change_failure_counts(application_ids, *, since, until) -> dict[int, tuple[int, int]]:
    """{application id: (deployments, failures)} of the deployments that ended in
    [since, until), as the DORA change failure rate counts them (reporting.metrics): runs
    of kind ``deploy`` that ended succeeded, failed or rolled back; failures are the failed
    and rolled back ones. One query for all the applications."""
    rows = (Deployment.objects
            .filter(application_id__in=set(application_ids), kind=Deployment.Kind.DEPLOY,
                    status__in=DORA_FINAL, finished_at__gte=since, finished_at__lt=until)
            .values("application_id")
            .annotate(n=Count("id"), failed=Count("id", filter=Q(status__in=DORA_FAILURE))))
    return {row["application_id"]: (row["n"], row["failed"]) for row in rows}


def rollback_counts(pairs, *, since) -> dict[tuple[int, int], int]:
    """{(application id, environment id): deployments there rolled back (automatically
    or by hand) that ended since ``since``}. One query for all the pairs."""
    pairs = set(pairs)
    if not pairs:
        return {}
    rows = (Deployment.objects
            .filter(application_id__in={a for a, _ in pairs},
                    environment_id__in={e for _, e in pairs},
                    status=Deployment.Status.ROLLED_BACK, finished_at__gte=since)
            .values("application_id", "environment_id").annotate(n=Count("id")))
    found = {(r["application_id"], r["environment_id"]): r["n"] for r in rows}
    return {pair: found.get(pair, 0) for pair in pairs}
