"""A change of grants or group membership drops the permissions the request has read
(``core.permissions``). Connected in ``CoreConfig.ready``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from guardian.models import GroupObjectPermission, UserObjectPermission

from core.permissions import forget_permissions


# A page that grants, revokes or changes a group reads permissions afresh afterwards.
@receiver([post_save, post_delete], sender=UserObjectPermission,
          dispatch_uid="core.permissions.forget_user_grant")
@receiver([post_save, post_delete], sender=GroupObjectPermission,
          dispatch_uid="core.permissions.forget_group_grant")
def permissions_changed(sender, **kwargs):
    forget_permissions()


@receiver(m2m_changed, sender=get_user_model().groups.through,
          dispatch_uid="core.permissions.forget_membership")
def membership_changed(sender, **kwargs):
    forget_permissions()
