"""The one reader of object permissions (django-guardian), for every page, API and list.

It knows no model of ours by name: callers pass the model (the catalogue binds it to
environments in ``catalog.permissions``) and codenames without an app label.
"""

from __future__ import annotations

from collections import defaultdict

from django.contrib.contenttypes.models import ContentType
from guardian.models import GroupObjectPermission, UserObjectPermission


def object_permissions(user, model) -> dict[int, set[str]]:
    """{object id: {codename, ...}} for everything ``user`` holds on ``model``'s rows,
    directly or through a group, in two queries.

    Superusers hold every permission ``model`` declares on every row.
    """
    if not user.is_authenticated or not user.is_active:
        return {}
    if user.is_superuser:
        codenames = {codename for codename, _ in model._meta.permissions}
        return {pk: set(codenames) for pk in model.objects.values_list("pk", flat=True)}
    ct = ContentType.objects.get_for_model(model)
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


def has_object_perm(user, codename: str, obj) -> bool:
    """Whether active ``user`` holds ``codename`` (no app label) on ``obj``."""
    if not user.is_authenticated or not user.is_active:
        return False
    return user.has_perm(f"{obj._meta.app_label}.{codename}", obj)


def is_auditor(user) -> bool:
    return user.is_authenticated and (
        user.is_superuser or user.has_perm("core.view_audit_trail")
    )
