"""Every change of who may do what is audited, whichever road it takes (SOP 13.1:
monitor access to deployment systems).

- Edits in the Django admin of the things that decide what may happen (policies,
  windows, freezes, environment locks, applications' executors) go through
  ``admin_change_record``, called by ``audit.admin.AuditedModelAdmin``.
- Grants and revocations of permissions, whatever made them (the admin,
  django-guardian's admin pages, ``assign_perm`` / ``remove_perm`` in code, a
  management command), are recorded by the signal receivers below: group
  membership, a group's or user's model permissions, object permissions, and the
  superuser, staff and active flags of accounts.

Each event names the actor of the request being served (``core.context``), or
the portal itself with a reason outside a request, and is written in the
transaction of the change. Secrets (password hashes, token hashes, values under
secret-looking keys) never enter ``before`` or ``after``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from guardian.models import GroupObjectPermission, UserObjectPermission

from audit.trail import System, audit_record
from core import context

User = get_user_model()

SECRET_MARKERS = ("password", "secret", "token_hash", "api_key", "private_key", "credential")
REDACTED = "[redacted]"
ACCOUNT_FLAGS = ("is_superuser", "is_staff", "is_active")
OUTSIDE_A_REQUEST = "access change made outside a signed-in request (code or command)"


def _is_secret(name: str) -> bool:
    lowered = str(name).lower()
    return any(marker in lowered for marker in SECRET_MARKERS) or lowered == "token"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def snapshot(obj: models.Model, *, exclude: tuple[str, ...] = ()) -> dict:
    """The object's fields as the audit trail keeps them: no secrets."""
    data = {}
    for field in obj._meta.concrete_fields:
        if field.name in exclude or _is_secret(field.name):
            continue
        data[field.name] = _scrub(field.value_from_object(obj))
    for field in obj._meta.many_to_many:
        if field.name in exclude or not obj.pk:
            continue
        data[field.name] = sorted(str(o) for o in getattr(obj, field.name).all())
    return data


def acting():
    """Who the change is on the record as: the request's user, or the portal."""
    return context.current_user() or System(OUTSIDE_A_REQUEST)


def _environment_of(obj) -> str:
    environment = getattr(obj, "environment", None)
    slug = getattr(environment, "slug", "")
    if not slug and obj._meta.model_name == "environment":
        slug = obj.slug
    return str(slug or "")[:50]


def admin_change_record(*, actor, obj: models.Model, verb: str, before: dict | None,
                        after: dict | None) -> None:
    """Record an admin edit (``added``, ``changed``, ``deleted``) of ``obj``.

    Called inside the admin's transaction; an edit that changed nothing is not recorded.
    """
    if verb == "changed" and before == after:
        return
    with transaction.atomic():
        audit_record(actor=actor, action=f"{obj._meta.model_name}.{verb}_in_admin", obj=obj,
                     environment=_environment_of(obj), before=before, after=after)


# --- group membership and model permissions -----------------------------------------------


def _names(model, pks) -> list[str]:
    if model is Permission:
        rows = Permission.objects.filter(pk__in=pks).select_related("content_type")
        return sorted(f"{p.content_type.app_label}.{p.codename}" for p in rows)
    if model is Group:
        return sorted(Group.objects.filter(pk__in=pks).values_list("name", flat=True))
    return sorted(User.objects.filter(pk__in=pks).values_list(User.USERNAME_FIELD, flat=True))


# (through model, owner model, field on the owner, action)
M2M_AUDITED = {
    User.groups.through: (User, "groups", "access.group_membership_changed"),
    User.user_permissions.through: (User, "user_permissions", "access.user_permissions_changed"),
    Group.permissions.through: (Group, "permissions", "access.group_permissions_changed"),
}


def _owner_state(owner, field: str) -> list[str]:
    related = getattr(owner, field).all()
    return _names(related.model, related.values_list("pk", flat=True))


def _record_m2m(owner, field: str, action: str, before: list[str], after: list[str]) -> None:
    if before == after:
        return
    with transaction.atomic():
        audit_record(actor=acting(), action=action, obj=owner,
                     object_repr=str(owner)[:300], before={field: before},
                     after={field: after})


@receiver(m2m_changed, dispatch_uid="audit.access.m2m")
def audit_m2m(sender, instance, action, reverse, model, pk_set, **kwargs):
    if sender not in M2M_AUDITED:
        return
    if getattr(instance, "_access_audit_recorded", False):
        return  # the service making the change writes its own, fuller event
    owner_model, field, audit_action = M2M_AUDITED[sender]
    if not reverse:
        owners = [instance]
    elif action in ("pre_clear", "post_clear"):
        # group.user_set.clear(): every member loses the group.
        owners = None
    else:
        owners = list(owner_model.objects.filter(pk__in=pk_set or ()))
    if action in ("pre_add", "pre_remove", "pre_clear"):
        if owners is None:
            owners = list(getattr(instance, _reverse_accessor(sender, instance)).all())
        instance._access_audit_before = [(o, _owner_state(o, field)) for o in owners]
        return
    saved = getattr(instance, "_access_audit_before", [])
    instance._access_audit_before = []
    for owner, before in saved:
        _record_m2m(owner, field, audit_action, before, _owner_state(owner, field))


def _reverse_accessor(sender, instance) -> str:
    """The reverse manager on ``instance`` for a through model (group -> user_set)."""
    owner_model, field, _ = M2M_AUDITED[sender]
    return owner_model._meta.get_field(field).remote_field.get_accessor_name()


@receiver(pre_delete, sender=Group, dispatch_uid="audit.access.group_pre_delete")
def remember_group_members(sender, instance, **kwargs):
    # Deleting a group drops its memberships without an m2m signal.
    instance._access_audit_members = sorted(
        instance.user_set.values_list(User.USERNAME_FIELD, flat=True))
    instance._access_audit_permissions = _owner_state(instance, "permissions")


@receiver(post_delete, sender=Group, dispatch_uid="audit.access.group_post_delete")
def audit_group_deleted(sender, instance, **kwargs):
    with transaction.atomic():
        audit_record(actor=acting(), action="access.group_deleted", object_type="group",
                     object_id=instance.pk, object_repr=instance.name,
                     before={"members": getattr(instance, "_access_audit_members", []),
                             "permissions": getattr(instance, "_access_audit_permissions", [])},
                     after=None)


# --- account flags --------------------------------------------------------------------------


@receiver(pre_save, sender=User, dispatch_uid="audit.access.user_pre_save")
def remember_account_flags(sender, instance, update_fields=None, raw=False, **kwargs):
    if raw or (update_fields is not None and not set(update_fields) & set(ACCOUNT_FLAGS)):
        return  # e.g. last_login on every sign-in: no flag can change
    old = (User.objects.filter(pk=instance.pk).values(*ACCOUNT_FLAGS).first()
           if instance.pk else None)
    instance._access_audit_flags = old


@receiver(post_save, sender=User, dispatch_uid="audit.access.user_post_save")
def audit_account_flags(sender, instance, created, update_fields=None, raw=False, **kwargs):
    if raw or not hasattr(instance, "_access_audit_flags"):
        return
    old = instance._access_audit_flags
    del instance._access_audit_flags
    now = {flag: getattr(instance, flag) for flag in ACCOUNT_FLAGS}
    if old is None:
        # A new account is on the record when it starts with more than a plain user has.
        if not (now["is_superuser"] or now["is_staff"]):
            return
        old = {"is_superuser": False, "is_staff": False, "is_active": False}
    changed = {flag for flag in ACCOUNT_FLAGS if old[flag] != now[flag]}
    if not changed:
        return
    with transaction.atomic():
        audit_record(actor=acting(), action="access.account_flags_changed", obj=instance,
                     object_repr=instance.get_username(),
                     before={flag: old[flag] for flag in sorted(changed)},
                     after={flag: now[flag] for flag in sorted(changed)})


@receiver(pre_delete, sender=User, dispatch_uid="audit.access.user_pre_delete")
def remember_account_access(sender, instance, **kwargs):
    # Deleting an account drops its memberships without an m2m signal.
    instance._access_audit_deleted = {
        "groups": _owner_state(instance, "groups"),
        "user_permissions": _owner_state(instance, "user_permissions"),
        **{flag: getattr(instance, flag) for flag in ACCOUNT_FLAGS}}


@receiver(post_delete, sender=User, dispatch_uid="audit.access.user_post_delete")
def audit_account_deleted(sender, instance, **kwargs):
    with transaction.atomic():
        audit_record(actor=acting(), action="access.account_deleted", object_type="user",
                     object_id=instance.pk, object_repr=instance.get_username(),
                     before=getattr(instance, "_access_audit_deleted", None), after=None)


def password_set_record(*, user) -> None:
    """An administrator set (or disabled) ``user``'s password in the admin: with it they
    could sign in as that person, so it is an access change. Inside the setting
    transaction; the event says whether a password is usable now, never the hash."""
    audit_record(actor=acting(), action="access.password_set_in_admin", obj=user,
                 object_repr=user.get_username(),
                 after={"user": user.get_username(),
                        "usable_password": user.has_usable_password()})


# --- object permissions (django-guardian) ---------------------------------------------------


def _object_permission(row) -> dict:
    holder = ({"user": row.user.get_username()} if isinstance(row, UserObjectPermission)
              else {"group": row.group.name})
    target = row.content_object
    return {**holder, "permission": f"{row.permission.content_type.app_label}."
                                    f"{row.permission.codename}",
            "object_type": row.content_type.model, "object_id": str(row.object_pk),
            "object": str(target) if target is not None else ""}


def _record_object_permission(row, granted: bool) -> None:
    described = _object_permission(row)
    target = row.content_object
    environment = _environment_of(target) if target is not None else ""
    with transaction.atomic():
        audit_record(
            actor=acting(),
            action=("access.object_permission_granted" if granted
                    else "access.object_permission_revoked"),
            # Its own object type, so the object's own history (its events) stays apart;
            # the environment field and the object id still find it.
            object_type="object_permission",
            object_id=f"{row.content_type.model}:{row.object_pk}"[:64],
            object_repr=described["object"], environment=environment,
            before={**described, "granted": not granted},
            after={**described, "granted": granted})


@receiver(post_save, sender=UserObjectPermission, dispatch_uid="audit.access.uop_save")
@receiver(post_save, sender=GroupObjectPermission, dispatch_uid="audit.access.gop_save")
def audit_object_permission_granted(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        _record_object_permission(instance, granted=True)


@receiver(post_delete, sender=UserObjectPermission, dispatch_uid="audit.access.uop_del")
@receiver(post_delete, sender=GroupObjectPermission, dispatch_uid="audit.access.gop_del")
def audit_object_permission_revoked(sender, instance, **kwargs):
    _record_object_permission(instance, granted=False)
