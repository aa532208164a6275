"""Environment locks: on-call and admins lock an environment during an incident and
unlock it after; no change starts deploying to a locked environment (its readiness
blockers name the lock)."""

from __future__ import annotations

from django.db import transaction

from audit.trail import audit_record
from catalog.models import Environment
from catalog.permissions import has_env_perm
from core.errors import Invalid, InvalidTransition, Refused
from identity import assurance


def environment_lock(*, actor, environment: Environment, reason: str) -> Environment:
    """On-call (who may roll back there) and admins lock an environment during an incident."""
    if not reason.strip():
        raise Invalid("say why the environment is locked", fields={"reason": [
            "Give the reason, e.g. the incident number."]})
    if not has_env_perm(actor, "rollback", environment):
        raise Refused(f"you may not lock {environment.name}", code="not_permitted")
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        if env.locked:
            raise InvalidTransition(f"{env.name} is already locked: {env.lock_reason}",
                                    code="already_locked")
        env.locked, env.lock_reason = True, reason.strip()[:300]
        env.save(update_fields=["locked", "lock_reason"])
        audit_record(actor=actor, action="environment.locked", obj=env, environment=env.slug,
                     before={"locked": False}, after={"locked": True}, reason=env.lock_reason)
    return env


@assurance.refusals_audited
def environment_unlock(*, actor, environment: Environment) -> Environment:
    if not has_env_perm(actor, "rollback", environment):
        raise Refused(f"you may not unlock {environment.name}", code="not_permitted")
    factor = assurance.require_fresh_second_factor(actor=actor,
                                                   doing=f"unlock {environment.name}",
                                                   environment=environment.slug)
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        if not env.locked:
            raise InvalidTransition(f"{env.name} is not locked", code="not_locked")
        reason = env.lock_reason
        env.locked, env.lock_reason = False, ""
        env.save(update_fields=["locked", "lock_reason"])
        audit_record(actor=actor, action="environment.unlocked", obj=env, environment=env.slug,
                     before={"locked": True, "reason": reason},
                     after={"locked": False, **factor})
    return env
