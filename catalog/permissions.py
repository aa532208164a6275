"""Who may do what on an environment: object permissions on ``Environment``, read
through the one reader in ``core.permissions``.

Codenames: request_change, deploy, rollback, approve_<role> (see Environment.Meta).
"""

from __future__ import annotations

from catalog.models import Environment
from core.permissions import has_object_perm, object_permissions

# What makes someone a Production decider, who must hold a second factor (SOP 10.2).
PRODUCTION_POWERS = frozenset({"deploy", "rollback"} | {
    codename for codename, _ in Environment._meta.permissions
    if codename.startswith("approve_")})


def environment_permissions(user) -> dict[int, set[str]]:
    """{environment id: {codename, ...}} for everything ``user`` holds, in two queries."""
    return object_permissions(user, Environment)


def has_env_perm(user, codename: str, environment) -> bool:
    return has_object_perm(user, codename, environment)


def holds_production_powers(user) -> bool:
    """Whether ``user`` may approve, deploy or roll back in a Production environment
    (settings.PORTAL_SECOND_FACTOR_REQUIRED_FOR names this)."""
    production = set(Environment.objects.filter(production=True).values_list("pk", flat=True))
    if not production:
        return False
    held = environment_permissions(user)
    return any(held.get(pk, set()) & PRODUCTION_POWERS for pk in production)
