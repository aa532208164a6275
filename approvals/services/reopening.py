"""When approvals stop counting: an approval whose concern changed since it was given,
or whose approver (or the delegator they stood in for) has since become the requester,
an author or a merger of the release, is withdrawn; its gate and the change go back to
waiting for approval, on the record, and the approver is told.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Prefetch

from approvals import eligibility, signals
from approvals.models import Approval, ChangeRequest, Gate
from approvals.selectors import Blocker, change_blockers
from approvals.services.fingerprints import CONCERNS, fingerprint
from audit.trail import System, audit_record
from core import clock
from core.errors import NotReady


def _reopen(change: ChangeRequest, approval: Approval, reason: str) -> None:
    """Withdraw one approval and put its gate (and the change) back to waiting."""
    approval.withdrawn_at = clock.now()
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
                                at=clock.now())


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
