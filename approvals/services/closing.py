"""Closing a change once the deployment it released has ended: in the transaction that
ends the deployment (``approvals.receivers``), or by the beat for one left deploying.
"""

from __future__ import annotations

import logging

from django.db import transaction

from approvals.models import ChangeRequest, ChecklistKind, PostImplementationReview
from approvals.services.changes import _policy
from approvals.services.checklists import _open_checklist
from audit.trail import System, audit_record
from core import clock
from deployments.models import Deployment

logger = logging.getLogger(__name__)


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
            change.closed_at = clock.now()
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
            # The beat and the deployment listener (approvals.receivers) close a change
            # with the same function of this module.
            change_request_deployment_finished(deployment=ended, status=ended.status)
        except Exception:
            logger.exception("closing change %s after deployment %s failed", change_id,
                             ended.pk)
            continue
        closed.append(change_id)
        logger.warning("closed change %s left deploying after deployment %s %s",
                       change_id, ended.pk, ended.status)
    return closed
