"""Object permissions on environments (django-guardian), read in bulk for pages and lists."""

from __future__ import annotations

from collections import defaultdict

from django.contrib.contenttypes.models import ContentType
from guardian.models import GroupObjectPermission, UserObjectPermission


def environment_permissions(user) -> dict[int, set[str]]:
    """{environment id: {codename, ...}} for everything ``user`` holds, in two queries.

    Superusers hold every permission on every environment.
    """
    from deployments.models import Environment

    if not user.is_authenticated or not user.is_active:
        return {}
    if user.is_superuser:
        codenames = {codename for codename, _ in Environment._meta.permissions}
        return {pk: set(codenames) for pk in Environment.objects.values_list("pk", flat=True)}
    ct = ContentType.objects.get_for_model(Environment)
    held: dict[int, set[str]] = defaultdict(set)
    rows = list(
        UserObjectPermission.objects.filter(user=user, content_type=ct).values_list(
            "object_pk", "permission__codename"
        )
    ) + list(
        GroupObjectPermission.objects.filter(group__user=user, content_type=ct).values_list(
            "object_pk", "permission__codename"
        )
    )
    for object_pk, codename in rows:
        held[int(object_pk)].add(codename)
    return dict(held)


def has_env_perm(user, codename: str, environment) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return user.has_perm(f"deployments.{codename}", environment)


def is_auditor(user) -> bool:
    return user.is_authenticated and (
        user.is_superuser or user.has_perm("portal.view_audit_trail")
    )
