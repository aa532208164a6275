"""Sign-ins, sign-outs and refused sign-ins go into the audit trail (SOP 13.1: monitor
access to deployment systems). Connected in ``PortalConfig.ready``."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from portal.audit import System, audit_record


@receiver(user_logged_in, dispatch_uid="portal.audit.login")
def audit_login(sender, request, user, **kwargs):
    with transaction.atomic():
        audit_record(actor=user, action="auth.login", obj=user,
                     object_repr=user.get_username())


@receiver(user_logged_out, dispatch_uid="portal.audit.logout")
def audit_logout(sender, request, user, **kwargs):
    if user is None or not user.is_authenticated:
        return
    with transaction.atomic():
        audit_record(actor=user, action="auth.logout", obj=user,
                     object_repr=user.get_username())


@receiver(user_login_failed, dispatch_uid="portal.audit.login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in ``credentials``; the attempted name
    # is kept so that the access review can count refusals per account.
    username = str(credentials.get("username", ""))[:150]
    with transaction.atomic():
        audit_record(actor=System("sign-in refused"), action="auth.login_failed",
                     object_type="user", object_repr=username)
