"""A policy change is a change (docs/policies.md): a new version of the policy document
is proposed, passes the gates the ACTIVE document names for policy changes (CAB and
security unless it says otherwise), decided by people who may decide those gates in a
Production environment, never by its proposer, with a fresh second factor; it becomes
active at its time (``approvals.services.governing``).
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Max

from approvals import eligibility
from approvals.models import GateRole, PolicyApproval, PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import example_failures
from approvals.policy.rows import render_rows, unknown_names
from approvals.selectors import person_facts
from approvals.services import governing
from audit.trail import System, audit_record
from catalog.models import Environment
from core import clock
from core.errors import (
    AlreadyDecided,
    Conflict,
    DomainError,
    Invalid,
    NotEligible,
    Refused,
    SelfApproval,
)
from identity import assurance

PROPOSE_PERMISSION = "approvals.add_policyversion"


class ExamplesFailed(DomainError):
    """A document whose own examples fail cannot be proposed."""

    status = 422
    code = "policy_examples_failed"


def _audit(actor, action: str, version: PolicyVersion, **kwargs) -> None:
    audit_record(actor=actor, action=action, obj=version, object_type="policyversion",
                 object_repr=str(version), **kwargs)


def policy_bootstrap(*, actor=None) -> PolicyVersion:
    """The first version: the policy rows written as a document and made active, when
    the portal has no version yet; otherwise the active one, unchanged."""
    with transaction.atomic():
        # Two first starts at once: the table lock lets one write version 1.
        existing = PolicyVersion.objects.select_for_update().order_by("number").first()
        if existing is not None:
            return governing.active_version() or existing
        text = render_rows()
        document = policy_document.parse(text)
        now = clock.now()
        version = PolicyVersion.objects.create(
            number=1, document=text, digest=document.digest,
            status=PolicyVersion.Status.ACTIVE, effective_at=now, activated_at=now,
            created_at=now, summary="The policy rows as they stood, written as a document.")
        _audit(actor or System("the policy rows become the first policy document"),
               "policy.activated", version,
               after={"version": 1, "policy_digest": version.digest, "bootstrap": True})
    return version


def check_document(text: str) -> policy_document.Document:
    """Parse ``text`` and check it names what the portal has and passes its examples."""
    document = policy_document.parse(text)
    problems = unknown_names(document)
    if problems:
        raise policy_document.PolicyInvalid(problems)
    failures = example_failures(document)
    if failures:
        raise ExamplesFailed(f"{len(failures)} of the document's {len(document.examples)} "
                             "examples fail: " + "; ".join(failures),
                             fields={"document": failures})
    return document


def may_propose(actor) -> bool:
    return bool(actor.is_authenticated and actor.is_active
                and actor.has_perm(PROPOSE_PERMISSION))


@assurance.refusals_audited
def policy_propose(*, actor, text: str, effective_at: datetime | None = None,
                   summary: str = "") -> PolicyVersion:
    """Propose ``text`` as the next version; it binds only once approved and due."""
    if not may_propose(actor):
        raise Refused("you may not propose policy changes", code="not_permitted")
    if effective_at is not None and effective_at.tzinfo is None:
        raise Invalid("effective_at needs a time zone", fields={
            "effective_at": ["Give the time with a time zone (Z or an offset)."]})
    document = check_document(text)
    with transaction.atomic():
        active = governing.active_version()
        if active is not None and active.digest == document.digest:
            raise Conflict("the document says what the active version says",
                           code="policy_unchanged")
        if active is not None:
            gates = policy_document.parse(active.document).policy_change_gates
        else:
            gates = dict(policy_document.DEFAULT_POLICY_CHANGE_GATES)
        # Two proposals at once: the unique number settles it; the lock makes it rare.
        PolicyVersion.objects.select_for_update().order_by("-number").first()
        number = (PolicyVersion.objects.aggregate(top=Max("number"))["top"] or 0) + 1
        version = PolicyVersion.objects.create(
            number=number, document=text, digest=document.digest, proposed_by=actor,
            effective_at=effective_at, based_on=active, gates=gates,
            summary=summary[:300], created_at=clock.now())
        _audit(actor, "policy.proposed", version,
               after={"version": number, "policy_digest": version.digest,
                      "based_on": active.number if active else None,
                      "active_policy_digest": active.digest if active else None,
                      "gates": gates, "effective_at": effective_at})
    return version


def may_decide_policy(actor, version: PolicyVersion, role: str) -> tuple[bool, str]:
    """(may decide the ``role`` gate of ``version``, why not): a person who may decide
    that gate in a Production environment, not the proposer, once per version."""
    if not actor.is_authenticated:
        return False, "sign in first"
    if version.proposed_by_id == actor.pk:
        return False, "you proposed this version; someone else decides it"
    if role not in version.gates:
        return False, f"this version has no {role} gate"
    person = person_facts(actor)
    now = clock.now()
    for env_id in Environment.objects.filter(production=True).values_list("pk", flat=True):
        direct, lent = eligibility.authority(person, env_id, role, now)
        if direct or lent:
            return True, ""
    return False, f"you may not decide {GateRole(role).label} gates in Production"


def pending_roles(version: PolicyVersion) -> dict[str, int]:
    """{role: approvals still missing} of a proposed version."""
    approved: dict[str, int] = {}
    for approval in version.approvals.all():
        if approval.decision == PolicyApproval.Decision.APPROVED:
            approved[approval.role] = approved.get(approval.role, 0) + 1
    return {role: count - approved.get(role, 0) for role, count in version.gates.items()
            if count > approved.get(role, 0)}


@assurance.refusals_audited
def policy_decide(*, actor, version: PolicyVersion, role: str, decision: str,
                  comment: str = "") -> PolicyVersion:
    """Approve or reject ``version`` for its ``role`` gate; the last approval makes it
    approved (active at once when its time has come)."""
    if decision not in PolicyApproval.Decision.values:
        raise Invalid("decide approved or rejected", fields={"decision": [
            "Choose approved or rejected."]})
    try:
        return _decide(actor=actor, version=version, role=role, decision=decision,
                       comment=comment)
    except Refused as exc:
        with transaction.atomic():
            _audit(actor, f"policy.{decision}.refused", version,
                   after={"code": exc.code, "role": role, "policy_digest": version.digest},
                   reason=exc.detail)
        raise


def _decide(*, actor, version: PolicyVersion, role: str, decision: str,
            comment: str) -> PolicyVersion:
    with transaction.atomic():
        # Two decisions at once on one version: the row lock serialises them.
        version = PolicyVersion.objects.select_for_update().get(pk=version.pk)
        if version.status != PolicyVersion.Status.PROPOSED:
            raise AlreadyDecided(f"policy v{version.number} is "
                                 f"{version.get_status_display().lower()}")
        allowed, why = may_decide_policy(actor, version, role)
        if not allowed:
            if version.proposed_by_id == actor.pk:
                raise SelfApproval(why)
            raise NotEligible(why)
        if version.approvals.filter(approver=actor).exists():
            raise NotEligible("you already decided this version; another person decides "
                              "its other gates", code="already_decided_by_you")
        factor = assurance.require_fresh_second_factor(
            actor=actor, doing="decide a policy change", environment="policy")
        active = PolicyVersion.objects.filter(status=PolicyVersion.Status.ACTIVE).first()
        PolicyApproval.objects.create(version=version, role=role, approver=actor,
                                      decision=decision, comment=comment,
                                      decided_at=clock.now())
        before = version.status
        if decision == PolicyApproval.Decision.REJECTED:
            version.status = PolicyVersion.Status.REJECTED
            version.closed_at = clock.now()
        elif not pending_roles(version):
            version.status = PolicyVersion.Status.APPROVED
            if version.effective_at is None or version.effective_at < clock.now():
                version.effective_at = clock.now()
        version.save(update_fields=["status", "closed_at", "effective_at"])
        _audit(actor, f"policy.{decision}", version, before={"status": before},
               after={"status": version.status, "role": role, "comment": comment,
                      "policy_digest": version.digest,
                      "active_policy_digest": active.digest if active else None,
                      "effective_at": version.effective_at, **factor})
    if version.status == PolicyVersion.Status.APPROVED:
        governing.active_version()  # active now if its time has come
        version.refresh_from_db()
    return version
