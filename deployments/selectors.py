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
