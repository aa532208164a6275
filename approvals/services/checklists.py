"""Checklists of a change: opened from the environment's templates (readiness before
the deployment, compliance after it, verification after a rollback) and ticked by hand.
"""

from __future__ import annotations

from django.db import transaction

from approvals import eligibility
from approvals.models import ChangeRequest, ChecklistItem, ChecklistTemplate
from approvals.selectors import person_facts
from audit.trail import audit_record
from catalog.permissions import has_env_perm
from core import clock
from core.errors import InvalidTransition, NotFound, Refused


def _open_checklist(change: ChangeRequest, kinds, *, deployment_id: int | None = None) -> int:
    templates = ChecklistTemplate.objects.filter(environment_id=change.environment_id,
                                                 change_type=change.change_type, kind__in=kinds)
    items = ChecklistItem.objects.bulk_create(
        ChecklistItem(change=change, kind=t.kind, position=t.position, text=t.text,
                      auto_check=t.auto_check, deployment_id=deployment_id)
        for t in templates)
    return len(items)


def may_tick_checklist(actor, change: ChangeRequest, *,
                       person: eligibility.Person | None = None) -> bool:
    """The requester, the on-call engineer, its approvers and who may deploy there.
    A page that read the actor's ``person_facts`` for this request passes them."""
    if (change.requested_by_id == actor.pk or change.on_call_id == actor.pk
            or has_env_perm(actor, "deploy", change.environment)):
        return True
    roles = eligibility.roles_with_authority(person or person_facts(actor), clock.now(),
                                             [change.environment_id])
    return any(g.role in roles.get(change.environment_id, ()) for g in change.gates.all())


def checklist_item_set(*, actor, change: ChangeRequest, item_id: int, done: bool,
                       note: str = "") -> ChecklistItem:
    """Tick or untick a manual checklist item, with a note."""
    with transaction.atomic():
        change = (ChangeRequest.objects.select_for_update(of=("self",)).with_related()
                  .get(pk=change.pk))
        item = change.checklist.filter(pk=item_id).first()
        if item is None:
            # A sub-resource that is not there (or belongs to another change): a 404.
            raise NotFound(f"{change.reference} has no checklist item {item_id}",
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
        item.done_at = clock.now() if done else None
        item.save(update_fields=["done", "note", "done_by", "done_at"])
        audit_record(actor=actor, action="checklist.ticked" if done else "checklist.unticked",
                     obj=change, object_repr=f"{change.reference}: {item.text}",
                     environment=change.environment.slug, before=before,
                     after={"done": item.done, "note": item.note, "item": item.pk})
    return item
