"""Read queries on the catalogue."""

from __future__ import annotations

from audit.permissions import is_auditor
from catalog.permissions import environment_permissions


def visible_environment_ids(user) -> list[int] | None:
    """Environments whose deployments ``user`` may see; None means all of them."""
    if user.is_superuser or is_auditor(user):
        return None
    return list(environment_permissions(user).keys())
