"""The messages of each domain event: who is told what when a change is submitted,
approved, rejected, refused a start or reopened, and when a deployment ends."""

from __future__ import annotations

from django.db import transaction

from core import clock
from deployments.models import Deployment
from notifications.models import Kind
from notifications.services.content import (
    approval_reopened_message,
    approval_request_message,
    cab_agenda_message,
    deadline_message,
    deployment_message,
    pre_deployment_message,
    rejected_message,
    start_refused_message,
)
from notifications.services.outbox import notifications_queue
from notifications.services.subscriptions import subscriptions_for


def _change(change_id):
    from approvals.models import ChangeRequest

    return (ChangeRequest.objects.with_related().select_related("release__application")
            .prefetch_related("gates__approvals").filter(pk=change_id).first())


def notifications_for_change_submitted(*, change_id: int, status: str, at=None,
                                       **kwargs) -> list[int]:
    """After a submission: approval requests to who may decide, and the pre-deployment
    notice when the change is already scheduled."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        ids = _approval_requests(change)
        if status == "scheduled":
            ids += _pre_deployment(change, at=change.scheduled_for)
        return ids


def notifications_for_gate_approved(*, change_id: int, change_status: str, at=None,
                                    **kwargs) -> list[int]:
    """An approval that made the change scheduled announces the deployment."""
    if change_status != "scheduled":
        return []
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        return _pre_deployment(change, at=change.scheduled_for or clock.now())


def notifications_for_gate_rejected(*, change_id: int, role: str, rejected_by: str,
                                    comment: str, **kwargs) -> list[int]:
    """The requester (and subscribers) learn who rejected the change, and why."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        message = rejected_message(change, gate=role.replace("_", " "),
                                   rejected_by=rejected_by, comment=comment)
        return notifications_queue(
            event_key=f"change:{change.pk}:rejected", message=message,
            change_id=change.pk, deployment_id=None,
            environment=change.environment.slug, people=[change.requested_by],
            subscriptions=subscriptions_for(Kind.REJECTED, change.release.application_id,
                                            change.environment_id))


def notifications_for_change_start_refused(*, change_id: int, deployer: str, trigger: str,
                                           at, **kwargs) -> list[int]:
    """The deployer (and the requester) learn that nothing started, and why."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        message = start_refused_message(change, deployer=deployer, trigger=trigger)
        return notifications_queue(
            event_key=f"change:{change.pk}:start_refused:{at:%Y%m%d%H%M%S}",
            message=message, change_id=change.pk, deployment_id=None,
            environment=change.environment.slug,
            people=[change.deployer or change.requested_by, change.requested_by])


def notifications_for_approval_reopened(*, change_id: int, approval_id: int, role: str,
                                        approver_id: int, changed: list[str], **kwargs
                                        ) -> list[int]:
    """The approver learns that their approval no longer counts, and what moved."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        change = _change(change_id)
        approver = get_user_model().objects.filter(pk=approver_id).first()
        if change is None or approver is None:
            return []
        message = approval_reopened_message(change, role=role, approver=approver,
                                            changed=changed)
        return notifications_queue(
            event_key=f"change:{change.pk}:reopened:{approval_id}",
            message=message, change_id=change.pk, deployment_id=None,
            environment=change.environment.slug, people=[approver],
            subscriptions=subscriptions_for(Kind.APPROVAL_REOPENED,
                                            change.release.application_id,
                                            change.environment_id))


def notifications_for_change_deploying(*, change_id: int, deployment_id: int, at,
                                       **kwargs) -> list[int]:
    """The deployment starts now: the pre-deployment notice (SOP 11.2)."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        return _pre_deployment(change, at=at, deployment_id=deployment_id)


def _deadline(change, *, event: str, due, roles, people, key: str) -> list[int]:
    message = deadline_message(change, event=event, due=due, roles=roles)
    return notifications_queue(
        event_key=f"change:{change.pk}:deadline:{key}", message=message,
        change_id=change.pk, deployment_id=None, environment=change.environment.slug,
        people=people, subscriptions=subscriptions_for(
            Kind.DEADLINE, change.release.application_id, change.environment_id))


def notifications_for_deadline_near(*, change_id: int, deadline: str, due, roles,
                                    **kwargs) -> list[int]:
    """Before the approve-by time, who may decide the gates still open; before the
    start-by time, the requester and the deployer."""
    from approvals.selectors import gate_deciders

    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        if deadline == "approve_by":
            from django.contrib.auth import get_user_model

            deciders = gate_deciders([change])
            ids = {person.id for gate in change.gates.all() if gate.role in roles
                   for person in deciders.get(gate.pk, ())}
            people = list(get_user_model().objects.filter(pk__in=ids, is_active=True)
                          .order_by("pk"))
        else:
            people = [change.requested_by, change.deployer]
        return _deadline(change, event=deadline, due=due, roles=roles, people=people,
                         key=f"{deadline}:{due:%Y%m%d%H%M%S}")


def notifications_for_gates_expired(*, change_id: int, roles, expires_at, **kwargs
                                    ) -> list[int]:
    """The requester learns the change is back in draft, to resubmit."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        return _deadline(change, event="expired", due=expires_at, roles=roles,
                         people=[change.requested_by],
                         key=f"expired:{expires_at:%Y%m%d%H%M%S}")


def notifications_for_approvals_lapsed(*, change_id: int, execute_by, approver_ids,
                                       **kwargs) -> list[int]:
    """The requester and the approvers whose approvals were withdrawn."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        approvers = list(get_user_model().objects.filter(pk__in=approver_ids))
        return _deadline(change, event="lapsed", due=execute_by, roles=[],
                         people=[change.requested_by, *approvers],
                         key=f"lapsed:{execute_by:%Y%m%d%H%M%S}")


def _pre_deployment(change, *, at, deployment_id=None) -> list[int]:
    message = pre_deployment_message(change, at=at or clock.now())
    key = (f"change:{change.pk}:pre:{deployment_id}" if deployment_id
           else f"change:{change.pk}:pre:{(at or clock.now()):%Y%m%d%H%M}")
    return notifications_queue(
        event_key=key, message=message, change_id=change.pk,
        deployment_id=deployment_id, environment=change.environment.slug,
        people=[change.requested_by, change.on_call],
        subscriptions=subscriptions_for(Kind.PRE_DEPLOYMENT, change.release.application_id,
                                        change.environment_id))


def _approval_requests(change) -> list[int]:
    """One message per person who may decide a pending gate (SOP 3.3), naming the gates:
    who may is ``approvals.eligibility``'s answer, as in the inbox."""
    from django.contrib.auth import get_user_model

    from approvals.selectors import gate_deciders

    deciders = gate_deciders([change])
    gates_by_user: dict[int, list[str]] = {}
    for gate in change.gates.all():
        for person in deciders.get(gate.pk, ()):
            gates_by_user.setdefault(person.id, []).append(gate.get_role_display())
    users = get_user_model().objects.filter(pk__in=gates_by_user, is_active=True)
    ids = []
    for user in users:
        if not user.email:
            continue
        message = approval_request_message(change, recipient=user, gates=gates_by_user[user.pk])
        ids += notifications_queue(event_key=f"change:{change.pk}:approval:{user.pk}",
                                   message=message, change_id=change.pk, deployment_id=None,
                                   environment=change.environment.slug, people=[user])
    if gates_by_user:
        message = approval_request_message(change, recipient=None,
                                           gates=sorted({g for gs in gates_by_user.values()
                                                         for g in gs}))
        ids += notifications_queue(event_key=f"change:{change.pk}:approval", message=message,
                                   change_id=change.pk, deployment_id=None,
                                   environment=change.environment.slug,
                                   subscriptions=subscriptions_for(
                                       Kind.APPROVAL_REQUEST, change.release.application_id,
                                       change.environment_id))
    return ids


def notifications_for_deployment(*, deployment: Deployment, status: str) -> list[int]:
    """After a deployment ends: the post-deployment summary, or the failure or rollback."""
    if status == Deployment.Status.CANCELLED:
        return []
    with transaction.atomic():
        deployment = (Deployment.objects.select_related("application", "environment",
                                                        "release").get(pk=deployment.pk))
        change = _change(deployment.change_id) if deployment.change_id else None
        message = deployment_message(deployment, status, change)
        people = [change.requested_by, change.on_call] if change is not None else []
        if deployment.started_by is not None:
            people.append(deployment.started_by)
        return notifications_queue(
            event_key=f"deployment:{deployment.pk}:{status}", message=message,
            change_id=deployment.change_id, deployment_id=deployment.pk,
            environment=deployment.environment.slug, people=people,
            subscriptions=subscriptions_for(message.kind, deployment.application_id,
                                            deployment.environment_id))


def notifications_for_cab_agenda(*, meeting_id: int, **kwargs) -> list[int]:
    """A CAB meeting's agenda to the board: who may decide its environment's CAB gate,
    and its chair (docs/cab.md). Once per meeting (the event key)."""
    from django.contrib.auth import get_user_model

    from approvals.models import CabMeeting
    from approvals.selectors import eligible_people

    meeting = (CabMeeting.objects.select_related("schedule__environment", "schedule__chair")
               .filter(pk=meeting_id).first())
    if meeting is None:
        return []
    environment = meeting.schedule.environment
    items = list(meeting.items.select_related("change__release__application")
                 .order_by("position", "id"))
    ids = eligible_people(environment, "cab") | {meeting.schedule.chair_id}
    people = list(get_user_model().objects.filter(pk__in=ids, is_active=True).order_by("pk"))
    return notifications_queue(
        event_key=f"cab_meeting:{meeting.pk}:agenda", message=cab_agenda_message(meeting, items),
        change_id=None, deployment_id=None, environment=environment.slug, people=people)
