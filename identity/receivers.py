"""Sign-ins, sign-outs and refused sign-ins go into the audit trail (SOP 13.1: monitor
access to deployment systems). Connected in ``IdentityConfig.ready``."""

from __future__ import annotations

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from audit.trail import System, audit_record


@receiver(user_logged_in, dispatch_uid="identity.audit_login")
def audit_login(sender, request, user, **kwargs):
    with transaction.atomic():
        audit_record(actor=user, action="auth.login", obj=user,
                     object_repr=user.get_username())


@receiver(user_logged_out, dispatch_uid="identity.audit_logout")
def audit_logout(sender, request, user, **kwargs):
    if user is None or not user.is_authenticated:
        return
    with transaction.atomic():
        audit_record(actor=user, action="auth.logout", obj=user,
                     object_repr=user.get_username())


@receiver(user_login_failed, dispatch_uid="identity.audit_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in ``credentials``; the attempted name
    # is kept (in its one spelling) so that the access review can count refusals per
    # account. A wrong second-factor code at sign-in comes here too
    # (identity.signin.PortalAuthenticateForm), marked as such, never with the code.
    from identity.signin import WRONG_CODE_REASON, normalize_username

    username = normalize_username(credentials.get("username", ""))[:150]
    stage = credentials.get("second_factor")
    with transaction.atomic():
        audit_record(actor=System("sign-in refused"), action="auth.login_failed",
                     object_type="user", object_repr=username,
                     after={"stage": str(stage)} if stage else None,
                     reason=WRONG_CODE_REASON if stage else "")


@receiver(user_locked_out, dispatch_uid="identity.audit_locked_out")
def audit_locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    # Sign-in for this username from this address is paused for the cool-off
    # (django-axes, settings.AXES_*). Axes repeats the signal for each attempt during
    # the cool-off; those are audited as auth.login_failed, the lockout itself once.
    if request is not None and not getattr(request, "axes_failures_since_start", None):
        return
    from identity.signin import normalize_username

    with transaction.atomic():
        audit_record(actor=System("sign-in lockout"), action="auth.locked_out",
                     object_type="user", object_repr=normalize_username(username)[:150],
                     after={"ip": ip_address,
                            "cooloff_minutes": cooloff_minutes()})


def cooloff_minutes() -> int:
    from django.conf import settings

    return max(1, int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
