"""Read queries for deployments, shared by pages and the API."""

from __future__ import annotations

from django.db.models import QuerySet

from deployments.models import Deployment, Environment
from portal.permissions import environment_permissions, is_auditor


def visible_environment_ids(user) -> list[int] | None:
    """Environments whose deployments ``user`` may see; None means all of them."""
    if user.is_superuser or is_auditor(user):
        return None
    return list(environment_permissions(user).keys())


def deployments_visible_to(user) -> QuerySet[Deployment]:
    qs = Deployment.objects.select_related(
        "application", "environment", "release", "started_by"
    )
    env_ids = visible_environment_ids(user)
    if env_ids is not None:
        qs = qs.filter(environment_id__in=env_ids)
    return qs


def environments() -> QuerySet[Environment]:
    return Environment.objects.order_by("order")


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
