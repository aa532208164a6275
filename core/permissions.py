"""The one reader of object permissions (django-guardian), for every page, API and list.

It knows no model of ours by name: callers pass the model (the catalogue binds it to
environments in ``catalog.permissions``) and codenames without an app label.
"""

from __future__ import annotations

from collections import defaultdict

from django.contrib.contenttypes.models import ContentType
from guardian.models import GroupObjectPermission, UserObjectPermission

from core import context

# Where a request keeps what it has read (``object_permissions``), so that the several
# checks one page makes cost two queries in all; dropped when a grant, a revocation or
# a group membership changes during the request (``forget_permissions``).
_REQUEST_CACHE = "_portal_object_permissions"


def object_permissions(user, model) -> dict[int, set[str]]:
    """{object id: {codename, ...}} for everything ``user`` holds on ``model``'s rows,
    directly or through a group, in two queries (once per request and model).

    Superusers hold every permission ``model`` declares on every row.
    """
    if not user.is_authenticated or not user.is_active:
        return {}
    request = context.current().request
    if request is None:
        return _read_object_permissions(user, model)
    cache = request.__dict__.setdefault(_REQUEST_CACHE, {})
    key = (user.pk, model._meta.label)
    if key not in cache:
        cache[key] = _read_object_permissions(user, model)
    # A copy: callers may add to what they get.
    return {pk: set(codenames) for pk, codenames in cache[key].items()}


def forget_permissions() -> None:
    """Drop what the current request has read (a permission or group changed)."""
    request = context.current().request
    if request is not None:
        request.__dict__.pop(_REQUEST_CACHE, None)


def _read_object_permissions(user, model) -> dict[int, set[str]]:
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
    """Whether active ``user`` holds ``codename`` (no app label) on ``obj``: what
    django-guardian answers, read through ``object_permissions``."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return codename in object_permissions(user, type(obj)).get(obj.pk, set())


def permission_holders(model, object_ids) -> dict[tuple[int, str], set[int]]:
    """{(object id, codename): {user id, ...}}: the active users who hold each codename
    on each of ``model``'s rows ``object_ids``, directly or through a group, in three
    queries."""
    from django.contrib.auth import get_user_model

    ct = ContentType.objects.get_for_model(model)
    pks = [str(pk) for pk in object_ids]
    holders: dict[tuple[int, str], set[int]] = defaultdict(set)
    for object_pk, codename, user_id in UserObjectPermission.objects.filter(
            content_type=ct, object_pk__in=pks, user__is_active=True).values_list(
            "object_pk", "permission__codename", "user_id"):
        holders[(int(object_pk), codename)].add(user_id)
    group_grants = list(GroupObjectPermission.objects.filter(
        content_type=ct, object_pk__in=pks).values_list(
        "object_pk", "permission__codename", "group_id"))
    members: dict[int, set[int]] = defaultdict(set)
    for group_id, user_id in get_user_model().objects.filter(
            is_active=True, groups__in={g for _, _, g in group_grants}).values_list(
            "groups", "pk"):
        members[group_id].add(user_id)
    for object_pk, codename, group_id in group_grants:
        holders[(int(object_pk), codename)] |= members[group_id]
    return dict(holders)


def permission_grants(model) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """Every grant on ``model``'s rows as stored, for the access review:
    ([(user id, object pk, codename)], [(group id, object pk, codename)]), two queries."""
    ct = ContentType.objects.get_for_model(model)
    fields = ("object_pk", "permission__codename")
    return (list(UserObjectPermission.objects.filter(content_type=ct)
                 .values_list("user_id", *fields)),
            list(GroupObjectPermission.objects.filter(content_type=ct)
                 .values_list("group_id", *fields)))
