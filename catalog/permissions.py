"""Who may do what on an environment: object permissions on ``Environment``, read
through the one reader in ``core.permissions``.

Codenames: request_change, deploy, rollback, approve_<role> (see Environment.Meta).
"""

from __future__ import annotations

from catalog.models import Environment
from core.permissions import has_object_perm, object_permissions


def environment_permissions(user) -> dict[int, set[str]]:
    """{environment id: {codename, ...}} for everything ``user`` holds, in two queries."""
    return object_permissions(user, Environment)


def has_env_perm(user, codename: str, environment) -> bool:
    return has_object_perm(user, codename, environment)
