"""Service accounts: the accounts CI and other automation act as (``ci-bot`` in the demo).

A service account is a member of a group named in ``PORTAL_SERVICE_ACCOUNT_GROUPS``
(default ``ci``); adding or removing someone there is an access change, audited as
every other (audit.access). It acts through API tokens an administrator issues
for it (the tokens page), and never decides a gate (approvals.services).
"""

from __future__ import annotations

from django.conf import settings


def is_service_account(user) -> bool:
    if not getattr(user, "pk", None):
        return False
    return user.groups.filter(name__in=settings.PORTAL_SERVICE_ACCOUNT_GROUPS).exists()


def service_accounts():
    """Active service accounts, by name (the tokens page offers these to administrators)."""
    from django.contrib.auth import get_user_model

    return (get_user_model().objects.filter(
        is_active=True, groups__name__in=settings.PORTAL_SERVICE_ACCOUNT_GROUPS)
        .distinct().order_by("username"))
