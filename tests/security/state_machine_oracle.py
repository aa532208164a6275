"""The oracle of the state machine in test_state_machine.py: what the portal's records
say, read from the database without asking the services.

Who holds what on an environment (a permission, or a live delegation from someone who
does), who is barred from deciding a change, what a deployment runs with, the audit
trail's last event, and the checks a deployment or rollback must have passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from allauth.mfa.models import Authenticator
from django.contrib.auth import get_user_model
from django.utils import timezone

from approvals.models import ChangeRequest, Delegation, GateRole
from audit.models import AuditEvent
from catalog.models import Application, Environment, Target
from deployments.models import Deployment

# --- the oracle's reading of the world ---------------------------------------------------


def _user(username: str):
    # A fresh instance: Django caches permissions on the user object.
    return get_user_model().objects.get(username=username)


def _holds(username: str, codename: str, environment: Environment) -> bool:
    return _user(username).has_perm(f"catalog.{codename}", environment)


def _may_decide_now(username: str, environment: Environment, role: str):
    """The oracle's answer: (eligible, delegator) from permissions and live delegations."""
    if _holds(username, GateRole(role).permission, environment):
        return True, None
    for d in Delegation.objects.filter(delegate__username=username, environment=environment,
                                       role=role, revoked_at__isnull=True,
                                       expires_at__gt=timezone.now()
                                       ).select_related("delegator"):
        if _holds(d.delegator.username, GateRole(role).permission, environment):
            return True, d.delegator.username
    return False, None


def _barred(change: ChangeRequest) -> frozenset[str]:
    """Who may not decide ``change``, as far as the portal knows now."""
    release = change.release
    return frozenset({change.requested_by.username} | set(release.authors or [])
                     | set(release.mergers or []))


def _is_barred(username: str, barred) -> bool:
    """Barred in any spelling: `CAB` among the authors is `cab`."""
    return username.casefold() in {name.casefold() for name in barred}


def _inputs_now(application_id: int, environment_id: int) -> dict:
    """What a deployment of the application there would run with, from the catalogue."""
    app = Application.objects.get(pk=application_id)
    targets = Target.objects.filter(application_id=application_id,
                                    environment_id=environment_id)
    return {"executor": [app.executor, app.executor_settings or {}],
            "targets": sorted([t.name, t.address] for t in targets)}


def _inputs_ran(deployment: Deployment) -> dict:
    """What the deployment runs with: what it kept when made, where it keeps that."""
    kept = getattr(deployment, "inputs", None) or {}
    if "executor_settings" in kept and "targets" in kept:
        return {"executor": [kept.get("executor"), kept.get("executor_settings") or {}],
                "targets": sorted([t["name"], t["address"]] for t in kept["targets"])}
    return _inputs_now(deployment.application_id, deployment.environment_id)


def _has_factor(username: str) -> bool:
    return Authenticator.objects.filter(user__username=username,
                                        type__in=("totp", "webauthn")).exists()


def _last_event() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def _assert_refusal_audited(since: int, what: str) -> None:
    assert AuditEvent.objects.filter(pk__gt=since, action__contains="refused").exists(), (
        f"{what} was refused with nothing on the audit trail")


@dataclass(frozen=True)
class Decided:
    """What the oracle knew when an approval was given."""

    via: str  # session or token
    fresh: bool  # the person's own second-factor check, within PORTAL_STEP_UP_SECONDS
    barred: frozenset[str]  # requester, authors and mergers known then
    inputs: dict  # the executor, its settings and the targets then



def _seen(shown: str) -> dict:
    """The fingerprint argument of a decision: what the approver was shown."""
    return {"seen": shown}


def _assert_own_fresh_check(pressed: tuple[str, bool] | None, what: str) -> None:
    """In Production, what a person pressed was pressed with their own fresh check."""
    if pressed is None:
        return  # started by the portal itself (the last approval, the schedule)
    road, fresh = pressed
    if road == "hook":
        return  # a signed hook acts as its service account, which holds no factor
    assert fresh, (f"{what} without a fresh check of the person's own second factor "
                   f"(through a {road})")


def _assert_rollback_allowed(deployment: Deployment, pressed) -> None:
    if deployment.started_by is None:
        return  # the engine's automatic rollback on failing health (no person)
    assert _holds(deployment.started_by.username, "rollback", deployment.environment), (
        f"rollback #{deployment.pk} was started by {deployment.started_by} without `rollback`")
    if deployment.environment.production:
        _assert_own_fresh_check(pressed, f"{deployment.started_by} rolled back "
                                         f"#{deployment.pk} in Production")
