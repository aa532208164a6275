"""CAB meetings (docs/cab.md): the next meeting of a schedule, its agenda, attendance,
decisions taken in the meeting through the gate decisions, and its minutes."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Prefetch

from approvals import signals
from approvals.models import (
    Approval,
    CabAgendaItem,
    CabAttendance,
    CabMeeting,
    CabSchedule,
    ChangeRequest,
    Gate,
)
from approvals.risk_selectors import latest_risk_for_many
from approvals.selectors import eligible_people
from approvals.services.decisions import gate_approve, gate_reject
from audit.trail import audit_record
from core import clock
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from identity import assurance

CAB = "cab"
WEEK = timedelta(days=7)


def meeting_starts_after(schedule: CabSchedule, after: datetime) -> datetime:
    """The first start of ``schedule`` strictly after ``after`` (in UTC), on its weekday
    and time in its time zone."""
    zone = zoneinfo.ZoneInfo(schedule.timezone)
    local = after.astimezone(zone)
    day = local.date() + timedelta(days=(schedule.weekday - local.weekday()) % 7)
    while True:
        start = datetime.combine(day, schedule.time, tzinfo=zone)
        if start > after:
            return start.astimezone(zoneinfo.ZoneInfo("UTC"))
        day += timedelta(days=7)


def meeting_next(schedule: CabSchedule, *, after: datetime | None = None) -> CabMeeting:
    """The next planned meeting of ``schedule`` (made once: a second call, or two at
    once, find the same row)."""
    after = after or clock.now()
    upcoming = (CabMeeting.objects.filter(schedule=schedule, starts_at__gt=after)
                .exclude(status=CabMeeting.Status.CLOSED).order_by("starts_at").first())
    if upcoming is not None:
        return upcoming
    starts = meeting_starts_after(schedule, after)
    try:
        with transaction.atomic():
            meeting, created = CabMeeting.objects.get_or_create(
                schedule=schedule, starts_at=starts,
                defaults={"ends_at": starts + timedelta(minutes=schedule.duration_minutes)})
            if created:
                audit_record(actor=_system(), action="cab.meeting_planned", obj=meeting,
                             object_repr=str(meeting),
                             environment=schedule.environment.slug,
                             after={"starts_at": starts.isoformat(),
                                    "schedule": schedule.name})
    except IntegrityError:
        meeting = CabMeeting.objects.get(schedule=schedule, starts_at=starts)
    return meeting


def _system():
    from audit.trail import System

    return System("CAB schedule")


def agenda_candidates(meeting: CabMeeting) -> list[ChangeRequest]:
    """The changes to the schedule's environment waiting for a CAB gate whose window
    (``scheduled_for``, or none yet) falls before the meeting after this one, ordered
    by window (unscheduled first: they may start at any moment) then risk score,
    highest first."""
    schedule = meeting.schedule
    following = meeting_starts_after(schedule, meeting.starts_at)
    changes = list(
        ChangeRequest.objects.filter(
            environment_id=schedule.environment_id,
            status=ChangeRequest.Status.PENDING_APPROVAL,
            gates__role=CAB, gates__status=Gate.Status.PENDING)
        .exclude(scheduled_for__gte=following).distinct())
    risk = latest_risk_for_many(changes)

    def key(change):
        assessment = risk.get(change.pk)
        window = change.scheduled_for.timestamp() if change.scheduled_for else float("-inf")
        return (window, -(assessment.score if assessment else -1), change.pk)

    return sorted(changes, key=key)


def agenda_build(meeting: CabMeeting) -> list[CabAgendaItem]:
    """Fill the agenda of a meeting not yet closed: add the waiting changes, drop the
    ones that no longer wait (never an item added by the chair, deferred or decided),
    and number them in the agenda's order, items the chair added last."""
    with transaction.atomic():
        meeting = CabMeeting.objects.select_for_update().get(pk=meeting.pk)
        if meeting.status == CabMeeting.Status.CLOSED:
            return list(meeting.items.all())
        wanted = agenda_candidates(meeting)
        items = {item.change_id: item for item in meeting.items.all()}
        wanted_ids = {c.pk for c in wanted}
        for change_id, item in list(items.items()):
            if (change_id not in wanted_ids and item.source == CabAgendaItem.Source.AGENDA
                    and not item.deferred and not item.decision):
                item.delete()
                del items[change_id]
        position = 0
        for change in wanted:
            position += 1
            item = items.get(change.pk)
            if item is None:
                items[change.pk] = CabAgendaItem.objects.create(
                    meeting=meeting, change=change, position=position)
            elif item.position != position and item.source == CabAgendaItem.Source.AGENDA:
                item.position = position
                item.save(update_fields=["position"])
        for item in items.values():
            if item.change_id not in wanted_ids:
                position += 1
                if item.position != position:
                    item.position = position
                    item.save(update_fields=["position"])
    return list(meeting.items.order_by("position", "id"))


def _locked_open_meeting(meeting: CabMeeting) -> CabMeeting:
    meeting = (CabMeeting.objects.select_for_update(of=("self",))
               .select_related("schedule__environment", "schedule__chair").get(pk=meeting.pk))
    if meeting.status == CabMeeting.Status.CLOSED:
        raise InvalidTransition(f"the meeting of {meeting.starts_at:%Y-%m-%d} is closed",
                                code="meeting_closed")
    return meeting


def _require_chair(meeting: CabMeeting, actor, doing: str) -> None:
    if actor.pk != meeting.schedule.chair_id:
        raise Refused(f"only the chair of {meeting.schedule.name} may {doing}",
                      code="not_chair")


def agenda_item_add(*, meeting: CabMeeting, change: ChangeRequest, actor) -> CabAgendaItem:
    """The chair puts a change of the schedule's environment on the agenda."""
    with transaction.atomic():
        meeting = _locked_open_meeting(meeting)
        _require_chair(meeting, actor, "add to the agenda")
        if change.environment_id != meeting.schedule.environment_id:
            raise Invalid(f"{change.reference} is not a change to "
                          f"{meeting.schedule.environment.name}",
                          fields={"change": ["Not a change to this board's environment."]})
        if meeting.items.filter(change=change).exists():
            raise Conflict(f"{change.reference} is on the agenda already", code="on_agenda")
        last = meeting.items.order_by("-position").values_list("position", flat=True).first()
        item = CabAgendaItem.objects.create(meeting=meeting, change=change,
                                            position=(last or 0) + 1,
                                            source=CabAgendaItem.Source.ADDED)
        audit_record(actor=actor, action="cab.agenda_item_added", obj=change,
                     environment=meeting.schedule.environment.slug,
                     after={"meeting": meeting.pk, "change": change.reference})
        return item


def agenda_item_defer(*, item: CabAgendaItem, reason: str, actor) -> CabAgendaItem:
    """The chair takes an item off this meeting's discussion, saying why."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("a deferral needs a reason", fields={"reason": ["Say why."]})
    with transaction.atomic():
        meeting = _locked_open_meeting(item.meeting)
        _require_chair(meeting, actor, "defer an item")
        item = CabAgendaItem.objects.select_related("change").get(pk=item.pk)
        item.deferred, item.defer_reason = True, reason[:300]
        item.save(update_fields=["deferred", "defer_reason"])
        audit_record(actor=actor, action="cab.agenda_item_deferred", obj=item.change,
                     environment=meeting.schedule.environment.slug,
                     after={"meeting": meeting.pk, "change": item.change.reference},
                     reason=item.defer_reason)
        return item


def attendance_mark(*, meeting: CabMeeting, user, present: bool, actor) -> CabAttendance:
    """The chair records who is in the room; the meeting is then in progress."""
    with transaction.atomic():
        meeting = _locked_open_meeting(meeting)
        _require_chair(meeting, actor, "take the attendance")
        row, _ = CabAttendance.objects.update_or_create(
            meeting=meeting, user=user,
            defaults={"present": bool(present), "marked_at": clock.now()})
        if meeting.status == CabMeeting.Status.PLANNED:
            meeting.status = CabMeeting.Status.IN_PROGRESS
            meeting.save(update_fields=["status"])
        audit_record(actor=actor, action="cab.attendance_marked", obj=meeting,
                     object_repr=str(meeting), environment=meeting.schedule.environment.slug,
                     after={"user": user.get_username(), "present": bool(present)})
        return row


def present_members(meeting: CabMeeting) -> set[int]:
    """The ids of the people marked present who may decide the CAB gate there."""
    present = set(meeting.attendance.filter(present=True).values_list("user_id", flat=True))
    return present & eligible_people(meeting.schedule.environment, CAB)


def _decision_allowed(meeting: CabMeeting, item: CabAgendaItem, actor) -> set[int]:
    """Refuses a decision in ``meeting`` by someone not present, without quorum, on a
    closed meeting or an item decided already; returns the members present."""
    with transaction.atomic():
        meeting = _locked_open_meeting(meeting)
        item = CabAgendaItem.objects.select_related("change").get(pk=item.pk, meeting=meeting)
        if item.decision:
            raise Conflict(f"{item.change.reference} was decided in this meeting already",
                           code="already_decided")
        present = present_members(meeting)
        if actor.pk not in present:
            raise Refused("only a CAB member marked present in the meeting decides in it",
                          code="not_present")
        gate = item.change.gates.filter(role=CAB).first()
        required = gate.required if gate else 1
        if len(present) < required:
            raise Conflict(f"{len(present)} CAB member(s) present; the CAB gate of "
                           f"{item.change.reference} needs {required}", code="no_quorum")
    return present


@assurance.refusals_audited
def meeting_decide(*, meeting: CabMeeting, item: CabAgendaItem, decision: str, actor,
                   comment: str = "") -> CabAgendaItem:
    """A member present in the meeting decides an item: approve and reject are the CAB
    gate's decisions (``gate_approve``, ``gate_reject``: eligibility and the second
    factor as anywhere), defer keeps the change waiting, with a reason. Refused while
    fewer members are present than the CAB gate needs (409 ``no_quorum``)."""
    comment = (comment or "").strip()
    if decision not in {"approve", "reject", "defer"}:
        raise Invalid("decide approve, reject or defer",
                      fields={"decision": ["approve, reject or defer"]})
    try:
        present = _decision_allowed(meeting, item, actor)
    except (Refused, Conflict) as exc:
        # On the record, as every refused decision (a transaction of its own).
        with transaction.atomic():
            audit_record(actor=actor, action="cab.item_decided.refused", obj=item.change,
                         environment=meeting.schedule.environment.slug,
                         after={"meeting": meeting.pk, "code": exc.code,
                                "decision": decision}, reason=exc.detail)
        raise
    if decision == "approve":
        gate = gate_approve(actor=actor, change=item.change, role=CAB, comment=comment)
        if gate.status == Gate.Status.PENDING:
            # The gate needs more approvals: the item waits for the next member's.
            with transaction.atomic():
                audit_record(actor=actor, action="cab.item_decided", obj=item.change,
                             environment=meeting.schedule.environment.slug,
                             after={"meeting": meeting.pk, "change": item.change.reference,
                                    "decision": decision, "comment": comment,
                                    "present": len(present), "gate": gate.status})
            return item
    elif decision == "reject":
        gate_reject(actor=actor, change=item.change, role=CAB, comment=comment)
    elif not comment:
        raise Invalid("a deferral needs a reason", fields={"comment": ["Say why."]})
    with transaction.atomic():
        item = CabAgendaItem.objects.select_for_update().select_related("change").get(
            pk=item.pk)
        item.decision, item.comment = decision, comment
        item.decided_by, item.decided_at = actor, clock.now()
        if decision == "defer":
            item.deferred, item.defer_reason = True, comment[:300]
        item.save()
        audit_record(actor=actor, action="cab.item_decided", obj=item.change,
                     environment=meeting.schedule.environment.slug,
                     after={"meeting": meeting.pk, "change": item.change.reference,
                            "decision": decision, "comment": comment,
                            "present": len(present)})
    return item


def meeting_minutes(meeting: CabMeeting) -> dict:
    """What the meeting decided, as the trail and the PDF record it."""
    attendance = (meeting.attendance.select_related("user").order_by("user__username"))
    items = (meeting.items.select_related("change", "decided_by")
             .prefetch_related(Prefetch("change__approvals", to_attr="cab_approvals",
                                        queryset=Approval.objects.filter(
                                            gate__role=CAB, withdrawn_at__isnull=True,
                                            decision=Approval.Decision.APPROVED)
                                        .select_related("approver").order_by("decided_at")))
             .order_by("position", "id"))
    return {
        "meeting": meeting.pk,
        "schedule": meeting.schedule.name,
        "starts_at": meeting.starts_at.isoformat(),
        "attendees": [a.user.get_username() for a in attendance if a.present],
        "absent": [a.user.get_username() for a in attendance if not a.present],
        "items": [{"change": i.change.reference, "decision": i.decision,
                   "deferred": i.deferred, "defer_reason": i.defer_reason,
                   "comment": i.comment,
                   "decided_by": i.decided_by.get_username() if i.decided_by else None,
                   # Who approved the change's CAB gate (in or before the meeting).
                   "cab_approvals": [a.approver.get_username() for a in i.change.cab_approvals]}
                  for i in items],
    }


def meeting_close(*, meeting: CabMeeting, actor) -> CabMeeting:
    """The chair closes the meeting: the minutes go to the trail (``cab.minutes``) and
    the next meeting is planned."""
    with transaction.atomic():
        meeting = _locked_open_meeting(meeting)
        _require_chair(meeting, actor, "close the meeting")
        meeting.status, meeting.closed_at = CabMeeting.Status.CLOSED, clock.now()
        meeting.save(update_fields=["status", "closed_at"])
        audit_record(actor=actor, action="cab.minutes", obj=meeting, object_repr=str(meeting),
                     environment=meeting.schedule.environment.slug,
                     after=meeting_minutes(meeting))
    meeting_next(meeting.schedule, after=max(meeting.starts_at, clock.now()))
    return meeting


def meetings_plan(*, at: datetime | None = None) -> list[CabMeeting]:
    """The next meeting of each active schedule, planned and its agenda built."""
    planned = []
    for schedule in CabSchedule.objects.filter(active=True).select_related("environment"):
        meeting = meeting_next(schedule, after=at)
        agenda_build(meeting)
        planned.append(meeting)
    return planned


def meetings_send_agendas(*, at: datetime | None = None) -> list[CabMeeting]:
    """Send each planned meeting's agenda to the board once, ``agenda_lead_hours``
    before it starts (or at once when planned later than that): the agenda is built
    again first, then the members are told (``cab_agenda_ready``)."""
    now = at or clock.now()
    sent = []
    due = (CabMeeting.objects.filter(status=CabMeeting.Status.PLANNED,
                                     agenda_sent_at__isnull=True, starts_at__gt=now,
                                     schedule__active=True)
           .select_related("schedule"))
    for meeting in due:
        if meeting.starts_at - timedelta(hours=meeting.schedule.agenda_lead_hours) > now:
            continue
        agenda_build(meeting)
        with transaction.atomic():
            meeting = (CabMeeting.objects.select_for_update(of=("self",))
                       .select_related("schedule__environment").get(pk=meeting.pk))
            if meeting.agenda_sent_at is not None:
                continue  # another beat sent it meanwhile
            meeting.agenda_sent_at = now
            meeting.save(update_fields=["agenda_sent_at"])
            items = list(meeting.items.select_related("change").order_by("position", "id"))
            audit_record(actor=_system(), action="cab.agenda_sent", obj=meeting,
                         object_repr=str(meeting), environment=meeting.schedule.environment.slug,
                         after={"items": [i.change.reference for i in items]})
            signals.send_in_transaction(signals.cab_agenda_ready, meeting_id=meeting.pk,
                                        change_id=None, at=now)
        sent.append(meeting)
    return sent
