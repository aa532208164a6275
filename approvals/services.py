"""State changes of change requests: request, submit, edit, decide, withdraw, deploy, cancel.

Every rule of the approval workflow is here, once; pages, the API and tasks call
these functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from approvals import eligibility, signals
from approvals.models import (
    PRE_DEPLOYMENT_KINDS,
    Approval,
    ApprovalPolicy,
    ChangeRequest,
    ChangeType,
    ChecklistItem,
    ChecklistKind,
    ChecklistTemplate,
    Delegation,
    Gate,
    GateRole,
    PostImplementationReview,
    Strategy,
)
from approvals.selectors import (
    Blocker,
    change_blockers,
    person_facts,
    unsatisfiable_gates,
)
from audit.trail import System, audit_record
from catalog.models import Environment, Release
from catalog.permissions import has_env_perm
from configuration.selectors import digests_for, digests_of_version, version_for
from core import context as request_context
from core.context import RequestContext
from core.errors import (
    AlreadyDecided,
    ChangedSinceViewed,
    DeploymentInProgress,
    DomainError,
    Invalid,
    InvalidTransition,
    NotEligible,
    NotReady,
    Refused,
    SelfApproval,
)
from deployments import inputs as deployment_inputs
from deployments import services as deployment_services
from deployments.models import Deployment
from identity import assurance

logger = logging.getLogger(__name__)

# Which gates each part of an approved change concerns (DESIGN.md section 8): an
# edit reopens only the gates whose concern changed.
CONCERNS: dict[str, set[str]] = {
    "artifact": {r.value for r in GateRole},
    "strategy": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB, GateRole.EMERGENCY},
    "rollback_plan": {GateRole.TECH_LEAD, GateRole.CAB, GateRole.EMERGENCY},
    "migration_plan": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB, GateRole.EMERGENCY},
    "configuration": {GateRole.TECH_LEAD, GateRole.SECURITY, GateRole.EMERGENCY},
    "secret_references": {GateRole.SECURITY},
    "on_call": {GateRole.CAB, GateRole.EMERGENCY},
    # What CAB and the business weigh: how risky, whom it affects, and when it runs.
    "risk": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    "impact": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    "scheduled_for": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    # What runs, besides the artifact (deployments.inputs): the executor and its settings
    # are the deploy command and the strategy's parameters, as much what runs as the
    # artifact is; the targets say where it runs (and where its configuration and
    # secrets go); the environment's settings whether a backup and maintenance mode
    # surround the migrations.
    "executor": {r.value for r in GateRole},
    "targets": {GateRole.TECH_LEAD, GateRole.CAB, GateRole.SECURITY, GateRole.EMERGENCY},
    "environment_settings": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB,
                             GateRole.EMERGENCY},
}

EDITABLE_FIELDS = ("strategy", "rollback_plan", "risk", "impact", "on_call", "scheduled_for")
MAX_DELEGATION = timedelta(days=30)


def _snapshot(change: ChangeRequest) -> dict:
    return {
        "status": change.status,
        "release": change.release.version,
        "environment": change.environment.slug,
        "change_type": change.change_type,
        "strategy": change.strategy,
        "rollback_plan": change.rollback_plan,
        "on_call": change.on_call.get_username() if change.on_call_id else None,
        "scheduled_for": change.scheduled_for,
        "deployer": change.deployer.get_username() if change.deployer_id else None,
    }


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _moment(value: datetime | None) -> str | None:
    """A time to the second in UTC, so a value read back from the database hashes alike."""
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


def fingerprint(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                inputs: dict | None = None) -> dict[str, str]:
    """A hash per concern of what an approver approves: everything that decides what
    runs (artifact and digest, configuration, executor and its settings, targets,
    strategy and its parameters, environment settings, schedule) and what CAB weighs.

    ``digests`` are the change's configuration digests and ``inputs`` its deployment
    inputs (``deployments.inputs``) when the caller read them for many changes at once
    (``configuration.selectors.digests_for_many``, ``run_inputs_for_many``) or fixed
    them for a deployment (``_start_deployment``).
    """
    release = change.release
    config_digest, secrets_digest = digests if digests is not None else digests_for(change)
    if inputs is None:
        inputs = deployment_inputs.inputs_of(release.application, change.environment)
    return {
        "artifact": _digest([release.version, release.artifact_sha256, release.artifact_url]),
        "strategy": _digest(change.strategy),
        "rollback_plan": _digest(change.rollback_plan.strip()),
        "migration_plan": _digest(release.migration_plan),
        "configuration": _digest(config_digest),
        "secret_references": _digest(secrets_digest),
        "on_call": _digest(change.on_call_id),
        "risk": _digest(change.risk),
        "impact": _digest(change.impact.strip()),
        "scheduled_for": _digest(_moment(change.scheduled_for)),
        "executor": _digest([inputs["executor"], inputs["executor_settings"]]),
        "targets": _digest([[t["name"], t["address"]] for t in inputs["targets"]]),
        "environment_settings": _digest(inputs["environment_settings"]),
    }


def run_inputs_for_many(changes) -> dict[tuple[int, int], dict]:
    """The deployment inputs of many changes in one query, by (application id,
    environment id): pass ``inputs=`` to ``fingerprint`` / ``change_version``."""
    return deployment_inputs.inputs_of_many(
        {(c.release.application, c.environment) for c in changes})


def change_version(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                   inputs: dict | None = None) -> str:
    """One value for everything an approver is shown and decides on: the page and the
    API hand it out, a decision brings it back, and a decision on a version that is no
    longer current is refused (approve what you saw)."""
    parts = fingerprint(change, digests=digests, inputs=inputs)
    parts["what"] = _digest([change.release_id, change.environment_id, change.change_type])
    return _digest(parts)


def _policy(change: ChangeRequest) -> ApprovalPolicy | None:
    return (ApprovalPolicy.objects.filter(environment_id=change.environment_id,
                                          change_type=change.change_type)
            .prefetch_related("gates").first())


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


@assurance.refusals_audited
def change_request_create(
    *,
    actor,
    release: Release,
    environment: Environment,
    change_type: str = ChangeType.STANDARD,
    strategy: str = Strategy.ALL_AT_ONCE,
    rollback_plan: str = "",
    risk: str = "",
    impact: str = "",
    on_call=None,
    scheduled_for: datetime | None = None,
    deploy_when_approved: bool = False,
    draft: bool = False,
) -> ChangeRequest:
    if change_type not in ChangeType.values:
        raise Invalid("unknown change type", fields={"change_type": [
            f"Choose one of {', '.join(ChangeType.values)}."]})
    if strategy not in Strategy.values:
        raise Invalid("unknown strategy", fields={"strategy": [
            f"Choose one of {', '.join(Strategy.values)}."]})
    # SOP 5.3: an emergency change always carries its rollback plan.
    if change_type == ChangeType.EMERGENCY and not rollback_plan.strip():
        raise Invalid("an emergency change needs a rollback plan", fields={
            "rollback_plan": ["An emergency change needs a rollback plan (SOP 5.3)."]})
    if scheduled_for is not None and scheduled_for <= timezone.now():
        raise Invalid("the schedule is in the past", fields={
            "scheduled_for": ["Choose a time in the future."]})
    if not has_env_perm(actor, "request_change", environment):
        raise Refused(f"you may not request changes to {environment.name}",
                      code="not_permitted")
    try:
        factor = _require_deploy_for_self_start(actor, environment,
                                                deploy_when_approved=deploy_when_approved,
                                                scheduled_for=scheduled_for)
    except Refused as exc:
        with transaction.atomic():
            audit_record(actor=actor, action="change.create.refused",
                         object_type="changerequest", object_repr=f"{release} to "
                         f"{environment.slug}", environment=environment.slug,
                         after={"code": exc.code, "release": release.version,
                                "deploy_when_approved": deploy_when_approved,
                                "scheduled_for": scheduled_for}, reason=exc.detail)
        raise
    with transaction.atomic():
        change = ChangeRequest.objects.create(
            release=release, environment=environment, change_type=change_type,
            strategy=strategy, rollback_plan=rollback_plan, risk=risk, impact=impact,
            on_call=on_call, scheduled_for=scheduled_for,
            deploy_when_approved=deploy_when_approved, requested_by=actor,
            deployer=actor if (deploy_when_approved or scheduled_for) else None,
        )
        audit_record(actor=actor, action="change.created", obj=change,
                     environment=environment.slug, after={**_snapshot(change), **factor})
        if not draft:
            _submit(actor=actor, change=change)
    return change


def change_request_submit(*, actor, change: ChangeRequest) -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.requested_by_id != actor.pk:
            raise Refused("only the requester submits a draft", code="not_requester")
        _submit(actor=actor, change=change)
    return change


def _open_checklist(change: ChangeRequest, kinds, *, deployment_id: int | None = None) -> int:
    templates = ChecklistTemplate.objects.filter(environment_id=change.environment_id,
                                                 change_type=change.change_type, kind__in=kinds)
    items = ChecklistItem.objects.bulk_create(
        ChecklistItem(change=change, kind=t.kind, position=t.position, text=t.text,
                      auto_check=t.auto_check, deployment_id=deployment_id)
        for t in templates)
    return len(items)


def _submit(*, actor, change: ChangeRequest) -> None:
    """Draft -> pending approval, with one gate per required role of the policy."""
    if change.status != ChangeRequest.Status.DRAFT:
        raise InvalidTransition(f"{change.reference} is {change.get_status_display().lower()}, "
                                "not a draft")
    _hold_environment_if_it_may_start(change)
    policy = _policy(change)
    gates = [Gate(change=change, role=pg.role, required=pg.required)
             for pg in (policy.gates.all() if policy else [])]
    Gate.objects.bulk_create(gates)
    _open_checklist(change, PRE_DEPLOYMENT_KINDS)
    before = change.status
    change.status = ChangeRequest.Status.PENDING_APPROVAL if gates else _approved_status(change)
    change.submitted_at = timezone.now()
    change.save(update_fields=["status", "submitted_at"])
    unfillable = unsatisfiable_gates(change)
    audit_record(actor=actor, action="change.submitted", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status,
                        "gates": {g.role: g.required for g in gates},
                        "unsatisfiable": [b.message for b in unfillable]})
    signals.send_in_transaction(signals.change_submitted, change_id=change.pk,
                              status=change.status, at=change.submitted_at)
    if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
        _start_by_itself(change=change, why=f"{change.reference} submitted with no gates "
                                            "to pass, to deploy when approved")


def _approved_status(change: ChangeRequest) -> str:
    if change.scheduled_for and change.scheduled_for > timezone.now():
        return ChangeRequest.Status.SCHEDULED
    return ChangeRequest.Status.APPROVED


def may_decide(user, environment: Environment, role: str):
    """(allowed, lent): whether ``user`` holds the authority over ``role`` there, by the
    permission (lent is None) or by a live delegation from someone who still holds it
    (the oldest such delegation), before any change's own rules
    (``approvals.eligibility``)."""
    direct, lent = eligibility.authority(person_facts(user), environment.pk, role,
                                         timezone.now())
    if direct:
        return True, None
    return (True, lent[0]) if lent else (False, None)


def _refuse(verdict: eligibility.Verdict) -> None:
    """Raise the refusal a verdict of ``approvals.eligibility`` stands for."""
    if verdict.eligible:
        return
    if verdict.code == eligibility.REQUESTER:
        raise SelfApproval(verdict.detail)
    if verdict.code == eligibility.GATE_CLOSED:
        raise AlreadyDecided(verdict.detail)
    raise NotEligible(verdict.detail, code=verdict.code)


def _decide(*, actor, change: ChangeRequest, role: str, decision: str, comment: str,
            seen: str | None) -> Gate:
    action = f"gate.{decision}"
    try:
        with transaction.atomic():
            # The change row lock serialises every decision on this change:
            # approve racing reject, or two approvers at once, settle here.
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .get(pk=change.pk))
            _hold_environment_if_it_may_start(change)
            gate = _gate_open_to_decisions(change, role)
            lent = _decider_standing(actor, change, gate)
            factor = _step_up_for_production(
                actor, change.environment,
                f"{'approve' if decision == Approval.Decision.APPROVED else 'reject'} a "
                f"{change.environment.name} gate")
            current = change_version(change)
            _check_decision_is_new(change, seen=seen, current=current)
            Approval.objects.create(gate=gate, change=change, approver=actor,
                                    decision=decision, comment=comment,
                                    fingerprint=fingerprint(change),
                                    on_behalf_of_id=lent.delegator_id if lent else None)
            before = _apply_decision(change, gate, decision)
            audit_record(actor=actor, action=action, obj=change,
                         object_repr=f"{change} / {gate.get_role_display()}",
                         environment=change.environment.slug, before=before,
                         after={"gate": gate.status, "change": change.status, "role": role,
                                "comment": comment,
                                "on_behalf_of": lent.delegator if lent else None,
                                # The version decided on; None: an API client sent none.
                                "version": current, "version_seen": seen, **factor})
            _announce_decision(change, gate, actor, comment)
            if change.status == ChangeRequest.Status.APPROVED and change.deploy_when_approved:
                _start_by_itself(change=change, why=f"the last approval of {change.reference}"
                                                    f" ({role}, by {actor.get_username()})")
            return gate
    except (Refused, ChangedSinceViewed) as exc:
        _refusal_audited(f"{action}.refused", actor, change, exc, role=role,
                         version_seen=seen)
        raise


def _gate_open_to_decisions(change: ChangeRequest, role: str) -> Gate:
    """The change's ``role`` gate, while the change still takes decisions."""
    if change.status != ChangeRequest.Status.PENDING_APPROVAL:
        raise AlreadyDecided(
            f"{change.reference} is {change.get_status_display().lower()}; "
            "it takes no more decisions")
    gate = change.gates.filter(role=role).first()
    if gate is None:
        raise Invalid(f"{change.reference} has no {role} gate",
                      fields={"gate": [f"This change has no {role!r} gate."]})
    return gate


def _decider_standing(actor, change: ChangeRequest, gate: Gate):
    """Refuses a decider ``approvals.eligibility`` finds not eligible (segregation of
    duties, authority, one gate per person, the gate still waiting), under the change's
    row lock; returns the delegation ``actor`` decides through (None when they hold the
    permission themselves)."""
    gates = list(change.gates.prefetch_related("approvals"))
    gate = next(g for g in gates if g.pk == gate.pk)
    verdict = eligibility.gate_verdict(
        person=person_facts(actor), change=change, gate=gate,
        decided_by=eligibility.decided(gates), at=timezone.now())
    _refuse(verdict)
    return verdict.on_behalf_of


def _check_decision_is_new(change: ChangeRequest, *, seen: str | None, current: str) -> None:
    """Refuses a decision on an older version of the change than the current one."""
    if seen is not None and seen != current:
        raise ChangedSinceViewed(
            f"{change.reference} changed since you opened it; reload it, review what "
            "changed and decide again")


def _apply_decision(change: ChangeRequest, gate: Gate, decision: str) -> dict:
    """The gate and change after a decision (the Approval row already counted); returns
    their statuses before it."""
    before = {"gate": gate.status, "change": change.status}
    if decision == Approval.Decision.REJECTED:
        gate.status = Gate.Status.REJECTED
        change.status = ChangeRequest.Status.REJECTED
        change.closed_at = timezone.now()
    else:
        count = gate.approvals.filter(decision=Approval.Decision.APPROVED,
                                      withdrawn_at__isnull=True).count()
        if count >= gate.required:
            gate.status = Gate.Status.APPROVED
    gate.save(update_fields=["status"])
    if (decision == Approval.Decision.APPROVED
            and not change.gates.exclude(status=Gate.Status.APPROVED).exists()):
        change.status = _approved_status(change)
    change.save(update_fields=["status", "closed_at"])
    return before


def _announce_decision(change: ChangeRequest, gate: Gate, actor, comment: str) -> None:
    """Tell listeners about a decision once it has committed."""
    if gate.status == Gate.Status.REJECTED:
        signals.send_in_transaction(signals.gate_rejected, change_id=change.pk, role=gate.role,
                                  rejected_by=actor.get_username(), comment=comment,
                                  at=timezone.now())
    else:
        signals.send_in_transaction(signals.gate_approved, change_id=change.pk, role=gate.role,
                                  change_status=change.status, at=timezone.now())


@assurance.refusals_audited
def gate_approve(*, actor, change: ChangeRequest, role: str, comment: str = "",
                 seen: str | None = None) -> Gate:
    """Approve one gate. ``seen`` is the change version the approver was shown
    (``change_version``); a decision on an older version is refused. Pages always send
    it; API clients may leave it out (``None``), see docs/api.md."""
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.APPROVED, comment=comment.strip(), seen=seen)


@assurance.refusals_audited
def gate_reject(*, actor, change: ChangeRequest, role: str, comment: str,
                seen: str | None = None) -> Gate:
    if not comment or not comment.strip():
        raise Invalid("a rejection needs a comment saying why",
                      fields={"comment": ["Say why the change is rejected."]})
    return _decide(actor=actor, change=change, role=role,
                   decision=Approval.Decision.REJECTED, comment=comment.strip(), seen=seen)


def _reopen(change: ChangeRequest, approval: Approval, reason: str) -> None:
    """Withdraw one approval and put its gate (and the change) back to waiting."""
    approval.withdrawn_at = timezone.now()
    approval.withdrawn_reason = reason[:300]
    approval.save(update_fields=["withdrawn_at", "withdrawn_reason"])
    gate = approval.gate
    count = gate.approvals.filter(decision=Approval.Decision.APPROVED,
                                  withdrawn_at__isnull=True).count()
    if gate.status == Gate.Status.APPROVED and count < gate.required:
        gate.status = Gate.Status.PENDING
        gate.save(update_fields=["status"])
    if change.status in (ChangeRequest.Status.APPROVED, ChangeRequest.Status.SCHEDULED):
        change.status = ChangeRequest.Status.PENDING_APPROVAL
        change.save(update_fields=["status"])


def approval_withdraw(*, actor, change: ChangeRequest, role: str, reason: str = "") -> Gate:
    """An approver takes their approval back; allowed until the deployment starts."""
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.status not in (ChangeRequest.Status.PENDING_APPROVAL,
                                 ChangeRequest.Status.APPROVED,
                                 ChangeRequest.Status.SCHEDULED):
            raise InvalidTransition(
                f"{change.reference} is {change.get_status_display().lower()}; approvals can "
                "be withdrawn only until the deployment starts", code="too_late")
        approval = (change.approvals.select_related("gate")
                    .filter(approver=actor, gate__role=role, withdrawn_at__isnull=True,
                            decision=Approval.Decision.APPROVED).first())
        if approval is None:
            raise InvalidTransition(f"you have no approval on the {role} gate to withdraw",
                                    code="nothing_to_withdraw")
        before = {"gate": approval.gate.status, "change": change.status}
        _reopen(change, approval, reason or "withdrawn by the approver")
        audit_record(actor=actor, action="approval.withdrawn", obj=change,
                     environment=change.environment.slug, before=before,
                     after={"gate": approval.gate.status, "change": change.status,
                            "role": role}, reason=reason)
        return approval.gate


@assurance.refusals_audited
def change_request_update(*, actor, change: ChangeRequest, **fields) -> ChangeRequest:
    """The requester edits an open change; approvals whose concern changed no longer count."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise Invalid(f"these fields cannot be edited: {', '.join(sorted(unknown))}")
    if "strategy" in fields and fields["strategy"] not in Strategy.values:
        raise Invalid("unknown strategy", fields={"strategy": [
            f"Choose one of {', '.join(Strategy.values)}."]})
    try:
        return _update(actor=actor, change=change, fields=fields)
    except Refused as exc:
        _refusal_audited("change.edit.refused", actor, change, exc,
                         fields=sorted(fields))
        raise


def _update(*, actor, change: ChangeRequest, fields: dict) -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.requested_by_id != actor.pk:
            raise Refused("only the requester edits a change", code="not_requester")
        if change.status not in ChangeRequest.OPEN:
            raise InvalidTransition(f"{change.reference} is "
                                    f"{change.get_status_display().lower()} and cannot be edited")
        if (change.change_type == ChangeType.EMERGENCY and "rollback_plan" in fields
                and not (fields["rollback_plan"] or "").strip()):
            raise Invalid("an emergency change needs a rollback plan", fields={
                "rollback_plan": ["An emergency change needs a rollback plan (SOP 5.3)."]})
        if fields.get("scheduled_for"):
            _require_deploy_for_self_start(actor, change.environment,
                                           deploy_when_approved=False,
                                           scheduled_for=fields["scheduled_for"])
            # The one who set the time is the one the scheduled start acts for.
            fields = {**fields, "deployer": actor}
        before = _snapshot(change)
        for name, value in fields.items():
            setattr(change, name, value)
        change.save(update_fields=list(fields))
        reopened = _reopen_changed_concerns(change, f"{change.reference} was edited")
        if change.status == ChangeRequest.Status.APPROVED and change.scheduled_for and \
                change.scheduled_for > timezone.now():
            change.status = ChangeRequest.Status.SCHEDULED
            change.save(update_fields=["status"])
        audit_record(actor=actor, action="change.edited", obj=change,
                     environment=change.environment.slug, before=before,
                     after={**_snapshot(change), "reopened": reopened})
    return change


def _stale_approvals(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                     inputs: dict | None = None) -> list[tuple[Approval, list[str]]]:
    """Standing approvals with the parts of their concern that changed since given
    (against ``digests`` and ``inputs`` when the caller fixed them)."""
    now = fingerprint(change, digests=digests, inputs=inputs)
    stale = []
    for approval in change.approvals.filter(withdrawn_at__isnull=True,
                                            decision=Approval.Decision.APPROVED
                                            ).select_related("gate", "approver"):
        changed = [part for part, digest in now.items()
                   if approval.fingerprint.get(part) != digest
                   and approval.gate.role in CONCERNS.get(part, set())]
        if changed:
            stale.append((approval, changed))
    return stale


def _reopen_changed_concerns(change: ChangeRequest, why: str) -> list[str]:
    reopened = []
    for approval, changed in _stale_approvals(change):
        _reopen(change, approval, f"superseded: {', '.join(changed)} changed")
        reopened.append(approval.gate.role)
        audit_record(actor=System(why),
                     action="approval.invalidated", obj=change,
                     environment=change.environment.slug,
                     after={"role": approval.gate.role,
                            "approver": approval.approver.get_username(),
                            "changed": changed})
        _tell_approver(change, approval, changed)
    return reopened


def changes_reopen_for_configuration(*, application_id: int, environment_id: int) -> list[int]:
    """Configuration changed after approval: reopen the gates concerned on open changes."""
    return _reopen_open_changes(application_id=application_id, environment_id=environment_id,
                                why="the configuration changed after approval")


def changes_reopen_for_deployment_inputs(*, application_id: int | None = None,
                                         environment_id: int | None = None,
                                         why: str) -> list[int]:
    """What deployments run changed in the catalogue (an application's executor or its
    settings, a target, an environment's deployment settings): reopen the gates
    concerned on the open changes it touches (of ``application_id``, in
    ``environment_id``; None: all). Each change in its own transaction, after the edit
    has committed; until then the start's own check (``_start_deployment``) keeps a
    change whose facts moved from deploying."""
    return _reopen_open_changes(application_id=application_id, environment_id=environment_id,
                                why=why)


def _reopen_open_changes(*, application_id: int | None, environment_id: int | None,
                         why: str) -> list[int]:
    touched = []
    changes = ChangeRequest.objects.filter(
        status__in=[ChangeRequest.Status.PENDING_APPROVAL, ChangeRequest.Status.APPROVED,
                    ChangeRequest.Status.SCHEDULED])
    if application_id is not None:
        changes = changes.filter(release__application_id=application_id)
    if environment_id is not None:
        changes = changes.filter(environment_id=environment_id)
    for pk in list(changes.values_list("pk", flat=True)):
        with transaction.atomic():
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .filter(pk=pk, status__in=ChangeRequest.OPEN).first())
            if change is not None and _reopen_changed_concerns(change, why):
                touched.append(pk)
    return touched


def _outdated_approvals(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                        inputs: dict | None = None) -> list[Blocker]:
    """Approvals whose concern changed since they were given (a missed reopen)."""
    return [Blocker("approval_outdated",
                    f"the {approval.gate.get_role_display()} approval was given before the "
                    f"{', '.join(changed)} changed; it has to be given again")
            for approval, changed in _stale_approvals(change, digests=digests,
                                                      inputs=inputs)]


def _tell_approver(change: ChangeRequest, approval: Approval, changed: list[str]) -> None:
    """The approver hears that their approval no longer counts: a message written with
    the reopening, in its transaction (the notifications outbox), sent after commit."""
    signals.send_in_transaction(signals.approval_reopened, change_id=change.pk,
                                approval_id=approval.pk, role=approval.gate.role,
                                approver_id=approval.approver_id, changed=list(changed),
                                at=timezone.now())


def may_tick_checklist(actor, change: ChangeRequest) -> bool:
    """The requester, the on-call engineer, its approvers and who may deploy there."""
    if (change.requested_by_id == actor.pk or change.on_call_id == actor.pk
            or has_env_perm(actor, "deploy", change.environment)):
        return True
    roles = eligibility.roles_with_authority(person_facts(actor), timezone.now(),
                                             [change.environment_id])
    return any(g.role in roles.get(change.environment_id, ()) for g in change.gates.all())


def may_cancel(actor, change: ChangeRequest) -> bool:
    """The requester, or someone who may deploy to the change's environment."""
    return change.requested_by_id == actor.pk or has_env_perm(actor, "deploy",
                                                              change.environment)


def checklist_item_set(*, actor, change: ChangeRequest, item_id: int, done: bool,
                       note: str = "") -> ChecklistItem:
    """Tick or untick a manual checklist item, with a note."""
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        item = change.checklist.filter(pk=item_id).first()
        if item is None:
            raise Invalid(f"{change.reference} has no checklist item {item_id}",
                          code="no_such_item")
        if item.automatic:
            raise InvalidTransition(f"'{item.text}' is checked automatically from data; it "
                                    "cannot be ticked by hand", code="automatic_item")
        if not may_tick_checklist(actor, change):
            raise Refused("only the requester, the on-call engineer, approvers and people who "
                          "may deploy here tick the checklist", code="not_permitted")
        if item.pre_deployment and change.status not in ChangeRequest.OPEN:
            raise InvalidTransition("the readiness checklist is closed: the change has moved on")
        before = {"done": item.done, "note": item.note}
        item.done = bool(done)
        item.note = note.strip()
        item.done_by = actor if done else None
        item.done_at = timezone.now() if done else None
        item.save(update_fields=["done", "note", "done_by", "done_at"])
        audit_record(actor=actor, action="checklist.ticked" if done else "checklist.unticked",
                     obj=change, object_repr=f"{change.reference}: {item.text}",
                     environment=change.environment.slug, before=before,
                     after={"done": item.done, "note": item.note, "item": item.pk})
    return item


@assurance.refusals_audited
def change_request_deploy(*, actor, change: ChangeRequest) -> Deployment:
    try:
        with transaction.atomic():
            # Two deploy presses at once: the row lock lets one through; the
            # other sees the change already deploying.
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .get(pk=change.pk))
            if not has_env_perm(actor, "deploy", change.environment):
                raise Refused(f"you may not deploy to {change.environment.name}",
                              code="not_permitted")
            factor = _step_up_for_production(actor, change.environment,
                                             f"deploy to {change.environment.name}")
            stale = _reopen_approvals_that_stopped_counting(
                change, f"{actor.get_username()} deploying {change.reference} by hand")
            if not stale:
                return _start_deployment(actor=actor, change=change, second_factor=factor)
            # The reopened gates are kept (this transaction commits) and the start refused.
            refusal = _stale_refusal(change, stale)
            audit_record(actor=actor, action="change.deploy.refused", obj=change,
                         environment=change.environment.slug,
                         after={"code": "approval_conflict", "blockers": refusal.blockers,
                                **factor}, reason=refusal.detail)
        raise refusal
    except Refused as exc:
        _refusal_audited("change.deploy.refused", actor, change, exc)
        raise
    except NotReady as exc:
        # What would run is no longer what was approved: on the record, like a refusal.
        outdated = [b for b in exc.blockers or [] if b.get("code") == "approval_outdated"]
        if outdated:
            _refusal_audited("change.deploy.refused", actor, change, exc, blockers=outdated)
        raise


def _hold_environment_if_it_may_start(change: ChangeRequest) -> None:
    """A change that may start by itself within this transaction (deploy when approved)
    locks its environment's row before anything is written to the audit trail: the
    order every deployment and environment lock takes (the environment's row, then the
    trail's chain lock). Taken the other way round, a decision holding the chain lock
    and waiting for the environment would deadlock with on-call locking that
    environment, or with another deployment starting there."""
    if change.deploy_when_approved:
        change.environment = Environment.objects.select_for_update().get(
            pk=change.environment_id)


def _reopen_approvals_that_stopped_counting(change: ChangeRequest, why: str
                                            ) -> list[eligibility.Stale]:
    """Every start checks the approvals again, under the change's row lock: one whose
    approver (or the delegator they stood in for) has since become the requester, an
    author or a merger of the release (CI reports authorship after the fact) no longer
    counts. It is withdrawn, its gate and the change go back to waiting for approval,
    and each reopening is audited (``approval.invalidated`` with the ``code``)."""
    gates = list(change.gates.prefetch_related(Prefetch(
        "approvals", queryset=Approval.objects.select_related("approver", "on_behalf_of"))))
    stale = eligibility.stopped_counting(change, gates)
    for item in stale:
        approval = item.approval
        before = {"gate": approval.gate.status, "change": change.status}
        _reopen(change, approval, f"no longer counts: {item.detail}")
        audit_record(actor=System(why), action="approval.invalidated", obj=change,
                     environment=change.environment.slug, before=before,
                     after={"role": approval.gate.role,
                            "approver": approval.approver.get_username(),
                            "on_behalf_of": (approval.on_behalf_of.get_username()
                                             if approval.on_behalf_of_id else None),
                            "code": item.code, "gate": approval.gate.status,
                            "change": change.status},
                     reason=f"the {approval.gate.get_role_display()} approval no longer "
                            f"counts: {item.detail}")
        _tell_approver(change, approval, ["the release's authors and mergers"])
    return stale


def _stale_refusal(change: ChangeRequest, stale: list[eligibility.Stale]) -> NotReady:
    """The refusal of a start whose approvals stopped counting (their gates reopened)."""
    blockers = [Blocker(*item.as_blocker()) for item in stale] + change_blockers(change)
    return NotReady(f"{change.reference} cannot deploy: "
                    + "; ".join(b.message for b in blockers),
                    blockers=[b.as_dict() for b in blockers])


def _start_by_itself(*, change: ChangeRequest, why: str) -> Deployment | None:
    """Start the deployment its deployer asked the portal to start (once approved, or at
    the scheduled time), inside the transaction holding the change's row lock.

    The deployer's `deploy` permission is checked again now: if it is gone, nothing
    starts, the change stays approved for someone who may deploy there, and the refusal
    is audited (and so notified to the deployer and requester). The deployment and the
    audit trail name the deployer, not the approver or the clock that set it off.
    """
    deployer = change.deployer or change.requested_by
    stale = _reopen_approvals_that_stopped_counting(change, why)
    if stale:
        refusal = _stale_refusal(change, stale)
        audit_record(actor=System(why), action="change.start_deferred", obj=change,
                     environment=change.environment.slug,
                     after={"status": change.status, "code": "approval_conflict",
                            "blockers": refusal.blockers,
                            "deployer": deployer.get_username(), "trigger": why},
                     reason=refusal.detail)
        return None
    if not has_env_perm(deployer, "deploy", change.environment):
        audit_record(actor=System(why), action="change.start_refused", obj=change,
                     environment=change.environment.slug,
                     before={"status": change.status},
                     after={"status": change.status, "code": "not_permitted",
                            "deployer": deployer.get_username(), "trigger": why},
                     reason=f"{deployer.get_username()} may no longer deploy to "
                            f"{change.environment.name}; the change stays approved until "
                            "someone who may deploy there starts it")
        signals.send_in_transaction(signals.change_start_refused, change_id=change.pk,
                                  deployer=deployer.get_username(), trigger=why,
                                  at=timezone.now())
        return None
    ctx = request_context.current()
    # The deployer acts, not the caller's API token (if the last approver used one).
    bound = request_context.bind_request(RequestContext(
        request_id=ctx.request_id, ip=ctx.ip, user_agent=ctx.user_agent))
    try:
        # A savepoint: a change that is approved but not ready yet (outside its window,
        # checklist open, another deployment running) stays approved, and the decision
        # that approved it stands; it does not start later by surprise.
        with transaction.atomic():
            return _start_deployment(actor=deployer, change=change, trigger=why)
    except (NotReady, DeploymentInProgress) as exc:
        audit_record(actor=System(why), action="change.start_deferred", obj=change,
                     environment=change.environment.slug,
                     after={"status": change.status, "code": exc.code,
                            "blockers": getattr(exc, "blockers", None) or [],
                            "deployer": deployer.get_username(), "trigger": why},
                     reason="approved, but not ready to deploy; someone who may deploy "
                            "there starts it when it is")
        return None
    finally:
        request_context.unbind_request(bound)


def _start_deployment(*, actor, change: ChangeRequest, trigger: str = "",
                      second_factor: dict | None = None) -> Deployment:
    """Inside the transaction holding the change's row lock: check again, then start."""
    if change.status == ChangeRequest.Status.DEPLOYING:
        raise InvalidTransition(f"{change.reference} is already deploying",
                                code="already_deploying")
    # The environment's row too: a lock taken by on-call at this moment either lands
    # before this check or waits until the deployment exists.
    change.environment = Environment.objects.select_for_update().get(
        pk=change.environment_id)
    # What will run, read once: the approvals are checked against it and the deployment
    # keeps it and runs it, so an edit landing meanwhile changes neither.
    number, *digests = version_for(change)
    inputs = deployment_inputs.inputs_of(change.release.application, change.environment)
    blockers = change_blockers(change) + _outdated_approvals(
        change, digests=tuple(digests), inputs=inputs)
    if blockers:
        raise NotReady(
            f"{change.reference} cannot deploy yet: " + "; ".join(b.message for b in blockers),
            blockers=[b.as_dict() for b in blockers])
    version = change_version(change, digests=tuple(digests), inputs=inputs)
    deployment = deployment_services.deployment_create(
        actor=actor, release=change.release, environment=change.environment,
        strategy=change.strategy, change_id=change.pk,
        inputs={**inputs, "strategy": change.strategy, "configuration_version": number,
                "change_version": version})
    before = change.status
    change.status = ChangeRequest.Status.DEPLOYING
    change.save(update_fields=["status"])
    audit_record(actor=actor, action="change.deploying", obj=change,
                 environment=change.environment.slug, before={"status": before},
                 after={"status": change.status, "deployment": deployment.pk,
                        "preflight": "clear", "deployer": actor.get_username(),
                        "version": version, "configuration_version": number,
                        "trigger": trigger or "deployed by hand", **(second_factor or {})})
    signals.send_in_transaction(signals.change_deploying, change_id=change.pk,
                              deployment_id=deployment.pk, at=timezone.now())
    return deployment


def deployment_start_check(*, deployment: Deployment) -> str:
    """Whether a change's deployment that waited may start now: "" if it may, else why
    not. The engine asks (``deployments.services.register_start_check``, registered in
    ``ApprovalsConfig.ready``) inside the transaction holding the deployment's row lock,
    when the deployment is given its target after waiting in the queue and when a worker
    claims it.

    The same checks as every other start, against what this deployment will run (the
    inputs and configuration version it keeps): an approval whose approver (or the
    delegator they stood in for) has since become the requester, an author or a merger
    of the release no longer counts; an approval given before a part of its concern
    changed does not match what will run. Either reopens those gates, audited
    (``approval.invalidated``), the change goes back to waiting for approval
    (``change.start_refused``, with the blockers) and the engine cancels the deployment
    with the reason returned.
    """
    change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
              .filter(pk=deployment.change_id).first())
    if change is None:
        return f"the change #{deployment.change_id} that released it does not exist"
    if change.status != ChangeRequest.Status.DEPLOYING:
        # Only a start that passed the checks makes a change deploying; a deployment of a
        # change in any other state was not released by it (a repair in the database).
        return (f"{change.reference} is {change.get_status_display().lower()}, not "
                "deploying: it did not release this deployment")
    why = f"deployment #{deployment.pk} of {change.reference} about to start from the queue"
    stale = _reopen_approvals_that_stopped_counting(change, why)
    kept = deployment.inputs or {}
    outdated: list[tuple[Approval, list[str]]] = []
    if {"executor", "executor_settings", "targets", "environment_settings"} <= set(kept):
        digests = digests_of_version(change.release.application_id, change.environment_id,
                                     kept.get("configuration_version"))
        outdated = _stale_approvals(change, digests=digests, inputs=kept)
    for approval, changed in outdated:
        before = {"gate": approval.gate.status, "change": change.status}
        _reopen(change, approval, f"superseded: {', '.join(changed)} changed")
        audit_record(actor=System(why), action="approval.invalidated", obj=change,
                     environment=change.environment.slug, before=before,
                     after={"role": approval.gate.role,
                            "approver": approval.approver.get_username(),
                            "changed": changed, "gate": approval.gate.status})
        _tell_approver(change, approval, changed)
    if not stale and not outdated:
        return ""
    blockers = [Blocker(*item.as_blocker()) for item in stale] + [
        Blocker("approval_outdated",
                f"the {approval.gate.get_role_display()} approval was given before the "
                f"{', '.join(changed)} changed; it has to be given again")
        for approval, changed in outdated]
    change.status = ChangeRequest.Status.PENDING_APPROVAL
    change.save(update_fields=["status"])
    reason = "; ".join(b.message for b in blockers) + (
        f"; {change.reference} waits for approval again")
    audit_record(actor=System(why), action="change.start_refused", obj=change,
                 environment=change.environment.slug,
                 before={"status": ChangeRequest.Status.DEPLOYING},
                 after={"status": change.status, "deployment": deployment.pk,
                        "code": blockers[0].code,
                        "blockers": [b.as_dict() for b in blockers],
                        "trigger": "queue"},
                 reason=reason)
    return reason


def change_request_cancel(*, actor, change: ChangeRequest, reason: str = "") -> ChangeRequest:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        if change.status not in ChangeRequest.OPEN:
            raise InvalidTransition(
                f"{change.reference} is {change.get_status_display().lower()} and cannot be "
                "cancelled")
        if not may_cancel(actor, change):
            raise Refused("only the requester or someone who may deploy there can cancel",
                          code="not_permitted")
        before = change.status
        change.status = ChangeRequest.Status.CANCELLED
        change.closed_at = timezone.now()
        change.save(update_fields=["status", "closed_at"])
        audit_record(actor=actor, action="change.cancelled", obj=change,
                     environment=change.environment.slug, before={"status": before},
                     after={"status": change.status}, reason=reason)
    return change


def changes_start_scheduled(*, now: datetime | None = None) -> list[int]:
    """Beat: start scheduled changes whose time has come, only if still ready.

    Each change in its own transaction: one that fails (its target busy, say) goes
    back to approved with the failure audited, and the others still start.
    """
    now = now or timezone.now()
    started = []
    due = list(ChangeRequest.objects.filter(status=ChangeRequest.Status.SCHEDULED,
                                            scheduled_for__lte=now).values_list("pk", flat=True))
    for pk in due:
        try:
            deployment_id = _start_scheduled(pk)
        except Exception as exc:
            logger.exception("scheduled change %s failed to start", pk)
            _schedule_failed(pk, exc)
            continue
        if deployment_id is not None:
            started.append(deployment_id)
    return started


def _start_scheduled(pk: int) -> int | None:
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",), skip_locked=True)
                  .with_related().filter(pk=pk, status=ChangeRequest.Status.SCHEDULED)
                  .first())
        if change is None:
            return None
        when = f"{change.scheduled_for:%Y-%m-%d %H:%M}"
        system = System(f"{change.reference} scheduled for {when}")
        if _reopen_approvals_that_stopped_counting(change, system.reason):
            # Back to waiting for approval: the beat does not start it.
            return None
        blockers = change_blockers(change)
        if blockers:
            # Not ready at its time: it does not start later by surprise.
            change.status = ChangeRequest.Status.APPROVED
            change.save(update_fields=["status"])
            audit_record(actor=system, action="change.schedule_missed", obj=change,
                         environment=change.environment.slug,
                         before={"status": ChangeRequest.Status.SCHEDULED},
                         after={"status": change.status,
                                "blockers": [b.as_dict() for b in blockers]},
                         reason="not ready at its scheduled time")
            return None
        change.status = ChangeRequest.Status.APPROVED
        deployment = _start_by_itself(change=change, why=system.reason)
        if deployment is None:
            # The deployer may no longer deploy: it waits, approved, for someone who may.
            change.save(update_fields=["status"])
            return None
        return deployment.pk


def _schedule_failed(pk: int, exc: Exception) -> None:
    """A scheduled change that could not start: back to approved, on the record."""
    detail = getattr(exc, "detail", None) or f"{exc.__class__.__name__}"
    try:
        with transaction.atomic():
            change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                      .filter(pk=pk, status=ChangeRequest.Status.SCHEDULED).first())
            if change is None:
                return
            change.status = ChangeRequest.Status.APPROVED
            change.save(update_fields=["status"])
            audit_record(actor=System(f"{change.reference} scheduled start"),
                         action="change.schedule_failed", obj=change,
                         environment=change.environment.slug,
                         before={"status": ChangeRequest.Status.SCHEDULED},
                         after={"status": change.status,
                                "code": getattr(exc, "code", "error")},
                         reason=f"could not start at its scheduled time: {detail}")
    except Exception:
        logger.exception("recording the failed start of scheduled change %s failed", pk)


def change_request_deployment_finished(*, deployment: Deployment, status: str) -> None:
    """Close the change that released a deployment once the deployment ends."""
    if not deployment.change_id:
        return
    outcome = {
        Deployment.Status.SUCCEEDED: ChangeRequest.Status.DEPLOYED,
        Deployment.Status.FAILED: ChangeRequest.Status.FAILED,
        Deployment.Status.ROLLED_BACK: ChangeRequest.Status.ROLLED_BACK,
        Deployment.Status.CANCELLED: ChangeRequest.Status.APPROVED,
    }.get(status)
    if outcome is None:
        return
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .filter(pk=deployment.change_id).first())
        if change is None:
            return
        system = System(f"deployment #{deployment.pk} {status}")
        if status == Deployment.Status.ROLLED_BACK or getattr(deployment, "kind", "") == \
                "rollback":
            # SOP 8.3: verify the rollback, once: the rolled-back deployment and the
            # rollback that undid it are one event for the checklist.
            related = {deployment.pk, deployment.rolled_back_deployment_id}
            related |= set(Deployment.objects.filter(rolled_back_deployment_id=deployment.pk)
                           .values_list("pk", flat=True))
            if not change.checklist.filter(kind=ChecklistKind.ROLLBACK_VERIFICATION,
                                           deployment_id__in=related - {None}).exists():
                _open_checklist(change, [ChecklistKind.ROLLBACK_VERIFICATION],
                                deployment_id=deployment.pk)
        if change.status != ChangeRequest.Status.DEPLOYING:
            return
        change.status = outcome
        if outcome != ChangeRequest.Status.APPROVED:
            change.closed_at = timezone.now()
        change.save(update_fields=["status", "closed_at"])
        if outcome == ChangeRequest.Status.DEPLOYED:
            _open_checklist(change, [ChecklistKind.COMPLIANCE])
            policy = _policy(change)
            if policy and policy.opens_review:
                PostImplementationReview.objects.get_or_create(change=change)
        audit_record(actor=system,
                     action="change.closed" if change.closed_at else "change.reopened",
                     obj=change, environment=change.environment.slug,
                     before={"status": ChangeRequest.Status.DEPLOYING},
                     after={"status": outcome, "deployment": deployment.pk})


def changes_close_finished() -> list[int]:
    """Beat: close changes still deploying whose deployment has ended.

    The change normally closes in the transaction that ends its deployment; this
    settles one whose closing failed there. Each change on its own, so one that
    fails again does not keep the others open. Returns the ids of the changes closed.
    """
    closed = []
    stuck = ChangeRequest.objects.filter(status=ChangeRequest.Status.DEPLOYING)
    for change_id in stuck.values_list("pk", flat=True):
        deployments = Deployment.objects.filter(change_id=change_id)
        if deployments.filter(status__in=Deployment.ACTIVE).exists():
            continue
        ended = (deployments.filter(kind=Deployment.Kind.DEPLOY,
                                    status__in=Deployment.FINAL)
                 .order_by("-created_at", "-id").first())
        if ended is None:
            continue
        try:
            change_request_deployment_finished(deployment=ended, status=ended.status)
        except Exception:
            logger.exception("closing change %s after deployment %s failed", change_id,
                             ended.pk)
            continue
        closed.append(change_id)
        logger.warning("closed change %s left deploying after deployment %s %s",
                       change_id, ended.pk, ended.status)
    return closed


@assurance.refusals_audited
def review_close(*, actor, review: PostImplementationReview, findings: str
                 ) -> PostImplementationReview:
    """CAB closes the post-implementation review of an emergency change: never its
    requester, nor an author or merger of its release, nor a delegate standing for one
    (``eligibility.review_verdict``). A refusal is audited (``review.close.refused``)."""
    if not findings.strip():
        raise Invalid("say what the review found", fields={"findings": ["Record the findings."]})
    try:
        with transaction.atomic():
            review = (PostImplementationReview.objects.select_for_update(of=("self",))
                      .select_related("change__environment", "change__release",
                                      "change__requested_by").get(pk=review.pk))
            if review.closed_at:
                raise AlreadyDecided("this review is already closed")
            _refuse(eligibility.review_verdict(person=person_facts(actor),
                                               change=review.change, at=timezone.now()))
            factor = assurance.require_fresh_second_factor(
                actor=actor, doing="close a post-implementation review",
                environment=review.change.environment.slug)
            review.closed_at, review.closed_by, review.findings = (timezone.now(), actor,
                                                                   findings)
            review.save(update_fields=["closed_at", "closed_by", "findings"])
            audit_record(actor=actor, action="review.closed", obj=review.change,
                         environment=review.change.environment.slug,
                         after={"findings": findings, **factor})
        return review
    except Refused as exc:
        _refusal_audited("review.close.refused", actor, review.change, exc)
        raise


def delegation_create(*, actor, environment: Environment, role: str, delegate,
                      expires_at: datetime, reason: str = "") -> Delegation:
    """Lend one's authority over a gate role in an environment to a named person."""
    if role not in GateRole.values:
        raise Invalid("unknown gate", fields={"role": ["Choose a gate."]})
    if delegate.pk == actor.pk:
        raise Invalid("you cannot delegate to yourself", fields={"delegate": [
            "Choose someone else."]})
    now = timezone.now()
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
        delegation.revoked_at = timezone.now()
        delegation.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="delegation.revoked", obj=delegation,
                     environment=delegation.environment.slug)
    return delegation


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
