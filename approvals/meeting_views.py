"""Pages of CAB meetings (docs/cab.md): the schedules with the next and past meetings,
one meeting's agenda with attendance and decisions, its minutes and calendar entry."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from approvals import meeting_documents, meeting_selectors, services
from approvals.models import CabAgendaItem, CabMeeting
from approvals.selectors import changes_visible_to, eligible_people
from core import clock
from identity import stepup_views


def _meeting(request, pk: int) -> CabMeeting:
    ids = meeting_selectors.cab_environment_ids(request.user)
    if ids is not None and not ids:
        raise Http404
    return get_object_or_404(meeting_selectors.meetings_visible_to(request.user), pk=pk)


@login_required
def cab_home(request):
    ids = meeting_selectors.cab_environment_ids(request.user)
    if ids is not None and not ids:
        raise Http404
    now = clock.now()
    meetings = meeting_selectors.meetings_visible_to(request.user)
    return render(request, "approvals/cab_home.html", {
        "schedules": list(meeting_selectors.schedules_visible_to(request.user)),
        "upcoming": list(meetings.exclude(status=CabMeeting.Status.CLOSED)
                         .order_by("starts_at")[:20]),
        "past": list(meetings.filter(status=CabMeeting.Status.CLOSED)
                     .order_by("-starts_at")[:20]),
        "now": now,
    })


@login_required
def meeting_detail(request, pk: int):
    meeting = _meeting(request, pk)
    environment = meeting.schedule.environment
    members = list(get_user_model().objects.filter(
        pk__in=eligible_people(environment, "cab") | {meeting.schedule.chair_id})
        .order_by("username"))
    attendance = {a.user_id: a for a in meeting.attendance.all()}
    present = services.present_members(meeting)
    is_chair = request.user.pk == meeting.schedule.chair_id
    return render(request, "approvals/cab_meeting.html", {
        "meeting": meeting, "rows": meeting_selectors.agenda_rows(meeting),
        "members": [(m, attendance.get(m.pk)) for m in members],
        "present_count": len(present), "is_chair": is_chair,
        "is_present": request.user.pk in present,
        "open": meeting.status != CabMeeting.Status.CLOSED, "now": clock.now(),
    })


def _done(request, meeting: CabMeeting, action, success: str):
    return stepup_views.page_action(request, action, done=success,
                                    back=reverse("cab-meeting", args=[meeting.pk]))


@login_required
@require_POST
def meeting_attendance(request, pk: int):
    """The chair's attendance form: each member listed (``member``) is marked present
    when ticked (``present``), absent otherwise; only changed marks are recorded."""
    meeting = _meeting(request, pk)
    listed = {int(v) for v in request.POST.getlist("member") if v.isdigit() and len(v) < 12}
    ticked = {int(v) for v in request.POST.getlist("present") if v.isdigit() and len(v) < 12}
    marks = {a.user_id: a.present for a in meeting.attendance.all()}
    users = list(get_user_model().objects.filter(pk__in=listed | ticked).order_by("username"))

    def mark_all():
        for user in users:
            present = user.pk in ticked
            if marks.get(user.pk) is not present:
                services.attendance_mark(meeting=meeting, user=user, present=present,
                                         actor=request.user)

    return _done(request, meeting, mark_all, "Attendance saved.")


def _item(meeting: CabMeeting, item_id: int) -> CabAgendaItem:
    return get_object_or_404(CabAgendaItem.objects.select_related("change"),
                             pk=item_id, meeting=meeting)


@login_required
@require_POST
def meeting_item_decide(request, pk: int, item_id: int):
    meeting = _meeting(request, pk)
    item = _item(meeting, item_id)
    decision = request.POST.get("decision", "")
    return _done(request, meeting, lambda: services.meeting_decide(
        meeting=meeting, item=item, decision=decision, actor=request.user,
        comment=request.POST.get("comment", "")),
        f"{item.change.reference}: {decision} recorded.")


@login_required
@require_POST
def meeting_item_defer(request, pk: int, item_id: int):
    meeting = _meeting(request, pk)
    item = _item(meeting, item_id)
    return _done(request, meeting, lambda: services.agenda_item_defer(
        item=item, reason=request.POST.get("reason", ""), actor=request.user),
        f"{item.change.reference} deferred.")


@login_required
@require_POST
def meeting_item_add(request, pk: int):
    meeting = _meeting(request, pk)
    raw = request.POST.get("change", "").strip().upper().removeprefix("CR-")
    change = get_object_or_404(changes_visible_to(request.user),
                               pk=int(raw) if raw.isdigit() and len(raw) < 12 else 0)
    return _done(request, meeting, lambda: services.agenda_item_add(
        meeting=meeting, change=change, actor=request.user),
        f"{change.reference} added to the agenda.")


@login_required
@require_POST
def meeting_agenda_build(request, pk: int):
    meeting = _meeting(request, pk)
    if request.user.pk != meeting.schedule.chair_id:
        messages.error(request, "Only the chair builds the agenda.")
        return redirect("cab-meeting", pk=meeting.pk)
    return _done(request, meeting, lambda: services.agenda_build(meeting),
                 "The agenda is up to date.")


@login_required
@require_POST
def meeting_close(request, pk: int):
    meeting = _meeting(request, pk)
    return _done(request, meeting,
                 lambda: services.meeting_close(meeting=meeting, actor=request.user),
                 "The meeting is closed; its minutes are on the audit trail.")


@login_required
def meeting_minutes_pdf(request, pk: int):
    meeting = _meeting(request, pk)
    body = meeting_documents.minutes_pdf(meeting, services.meeting_minutes(meeting))
    response = HttpResponse(body, content_type="application/pdf")
    response["Content-Disposition"] = (f'attachment; filename="cab-minutes-{meeting.pk}-'
                                       f'{meeting.starts_at:%Y%m%d}.pdf"')
    return response


@login_required
def meeting_next_ics(request, pk: int):
    meeting = _meeting(request, pk)
    following = (CabMeeting.objects.filter(schedule=meeting.schedule,
                                           starts_at__gt=meeting.starts_at)
                 .select_related("schedule__chair").order_by("starts_at").first())
    agenda = []
    if following is None:
        # Not planned yet (the beat plans it): the schedule says when it will be.
        starts = services.meeting_starts_after(meeting.schedule, meeting.starts_at)
        following = CabMeeting(schedule=meeting.schedule, starts_at=starts,
                               ends_at=starts + timedelta(
                                   minutes=meeting.schedule.duration_minutes))
    else:
        agenda = [item.change.reference
                  for item in following.items.select_related("change").order_by("position")]
    body = meeting_documents.meeting_ics(following, host=request.get_host().split(":")[0],
                                         stamp=clock.now(), agenda=agenda)
    response = HttpResponse(body, content_type="text/calendar; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="cab-{following.pk}.ics"'
    return response
