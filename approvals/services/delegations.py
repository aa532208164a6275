"""Delegations: lending one's authority over a gate role in an environment to a named
person, for a while, and taking it back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from approvals.models import Delegation, GateRole
from audit.trail import audit_record
from catalog.models import Environment
from catalog.permissions import has_env_perm
from core import clock
from core.errors import Invalid, InvalidTransition, NotEligible, Refused

MAX_DELEGATION = timedelta(days=30)


def delegation_create(*, actor, environment: Environment, role: str, delegate,
                      expires_at: datetime, reason: str = "") -> Delegation:
    """Lend one's authority over a gate role in an environment to a named person."""
    if role not in GateRole.values:
        raise Invalid("unknown gate", fields={"role": ["Choose a gate."]})
    if delegate.pk == actor.pk:
        raise Invalid("you cannot delegate to yourself", fields={"delegate": [
            "Choose someone else."]})
    now = clock.now()
    if expires_at <= now:
        raise Invalid("the expiry is in the past", fields={"expires_at": [
            "Choose a time in the future."]})
    if expires_at > now + MAX_DELEGATION:
        raise Invalid("delegations last 30 days at most", fields={"expires_at": [
            "Choose a time within 30 days."]})
    if not has_env_perm(actor, GateRole(role).permission, environment):
        raise NotEligible(f"you cannot delegate the {GateRole(role).label} gate on "
                          f"{environment.name}: you do not hold it")
    with transaction.atomic():
        delegation = Delegation.objects.create(environment=environment, role=role,
                                               delegator=actor, delegate=delegate,
                                               expires_at=expires_at, reason=reason)
        audit_record(actor=actor, action="delegation.created", obj=delegation,
                     environment=environment.slug,
                     after={"role": role, "delegate": delegate.get_username(),
                            "expires_at": expires_at}, reason=reason)
    return delegation


def delegation_revoke(*, actor, delegation: Delegation) -> Delegation:
    with transaction.atomic():
        delegation = Delegation.objects.select_for_update().get(pk=delegation.pk)
        if delegation.delegator_id != actor.pk and not actor.is_superuser:
            raise Refused("only the delegator revokes a delegation", code="not_permitted")
        if delegation.revoked_at:
            raise InvalidTransition("the delegation is already revoked")
        delegation.revoked_at = clock.now()
        delegation.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="delegation.revoked", obj=delegation,
                     environment=delegation.environment.slug)
    return delegation
