"""Checks of the person acting that several state changes share: the second factor in
Production, the `deploy` permission behind a start the portal makes by itself, the
refusal an eligibility verdict stands for, and the audit of a refused attempt.
"""

from __future__ import annotations

from django.db import transaction

from approvals import eligibility
from approvals.models import ChangeRequest
from audit.trail import audit_record
from catalog.models import Environment
from catalog.permissions import has_env_perm
from core.errors import AlreadyDecided, DomainError, NotEligible, Refused, SelfApproval
from identity import assurance


def _refusal_audited(action: str, actor, change: ChangeRequest, exc: DomainError, **extra):
    """Record a refused attempt in its own transaction, so it survives the refusal."""
    with transaction.atomic():
        audit_record(actor=actor, action=action, obj=change, environment=change.environment.slug,
                     after={"code": exc.code, **extra}, reason=exc.detail)


def _step_up_for_production(actor, environment: Environment, doing: str) -> dict:
    """In Production a person decides only with a second factor used recently (SOP
    10.2); returns the audit entry saying which check it was."""
    if not environment.production:
        return {}
    return assurance.require_fresh_second_factor(actor=actor, doing=doing,
                                                 environment=environment.slug)


def _require_deploy_for_self_start(actor, environment: Environment, *,
                                   deploy_when_approved: bool, scheduled_for) -> dict:
    """Asking the portal to start the deployment by itself (once approved, or at a set
    time) is starting a deployment: it needs `deploy` on the environment, as pressing
    Deploy does. Without this, approvers' decisions would deploy for someone who may not.
    In Production it also needs a fresh second factor now, since nobody is asked for one
    when the portal starts it; returns the audit entry of that check."""
    asked = [name for name, value in (("deploy_when_approved", deploy_when_approved),
                                      ("scheduled_for", scheduled_for)) if value]
    if asked and not has_env_perm(actor, "deploy", environment):
        message = (f"You may not deploy to {environment.name}, so the portal cannot start "
                   "this deployment for you; someone who may deploy there starts it.")
        raise Refused(f"you may not deploy to {environment.name}: only someone who may "
                      "deploy there can have the deployment start by itself",
                      code="not_permitted", fields={name: [message] for name in asked})
    if not asked:
        return {}
    return _step_up_for_production(actor, environment,
                                   "have a Production deployment start by itself")


def _refuse(verdict: eligibility.Verdict) -> None:
    """Raise the refusal a verdict of ``approvals.eligibility`` stands for."""
    if verdict.eligible:
        return
    if verdict.code == eligibility.REQUESTER:
        raise SelfApproval(verdict.detail)
    if verdict.code == eligibility.GATE_CLOSED:
        raise AlreadyDecided(verdict.detail)
    raise NotEligible(verdict.detail, code=verdict.code)
