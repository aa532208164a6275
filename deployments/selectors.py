"""Read queries for deployments, shared by pages and the API."""

from __future__ import annotations

from django.db.models import QuerySet

from catalog.selectors import visible_environment_ids
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep


def deployments_visible_to(user) -> QuerySet[Deployment]:
    qs = Deployment.objects.select_related(
        "application", "environment", "release", "started_by"
    )
    env_ids = visible_environment_ids(user)
    if env_ids is not None:
        qs = qs.filter(environment_id__in=env_ids)
    return qs


def rollback_options(application, environment) -> list[dict]:
    """Earlier releases that succeeded in ``environment``, newest first, and whether
    rolling back to each is safe (no irreversible migration applied since)."""
    from deployments.services import irreversible_between

    latest = (Deployment.objects.filter(application=application, environment=environment)
              .exclude(status=Deployment.Status.QUEUED).order_by("-created_at", "-id").first())
    if latest is None:
        return []
    options, seen = [], {latest.release_id}
    earlier = (Deployment.objects.filter(application=application, environment=environment,
                                         status=Deployment.Status.SUCCEEDED,
                                         created_at__lt=latest.created_at)
               .select_related("release").order_by("-created_at", "-id")[:20])
    for deployment in earlier:
        if deployment.release_id in seen:
            continue
        seen.add(deployment.release_id)
        crossing = irreversible_between(latest, deployment)
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
    from deployments.services import _head, queue_position

    position = queue_position(deployment)
    if position is None:
        return {"position": None, "waiting_for": None, "head": None}
    head = _head(deployment.application_id, deployment.environment_id)
    return {"position": position, "waiting_for": head.pk if head else None, "head": head}


def queued_deployments(environment_ids=None) -> list[dict]:
    """Deployments waiting in a queue, with their position and what they wait for,
    for the dashboard and the change page (two queries)."""
    from deployments.services import HOLDING

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
    # Rollbacks go first in a queue, then first in first out (services._waiting).
    waiting.sort(key=lambda d: (d.environment.order, d.application.slug,
                                d.kind != Deployment.Kind.ROLLBACK, d.created_at, d.pk))
    for d in waiting:
        key = (d.application_id, d.environment_id)
        seen[key] = seen.get(key, 0) + 1
        rows.append({"deployment": d, "position": seen[key], "waiting_for": heads.get(key)})
    return rows
