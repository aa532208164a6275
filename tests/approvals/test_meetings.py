"""CAB meetings (docs/cab.md): the agenda of the next meeting, attendance taken by the
chair, decisions by the members present with their own second factor, quorum, and the
minutes on the trail, in the PDF and the next meeting's calendar entry."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from approvals import services
from approvals.models import CabAgendaItem, CabMeeting, CabSchedule, ChangeRequest, Gate
from audit.models import AuditEvent
from catalog.models import Environment
from core import clock
from core.errors import Conflict, Invalid, Refused
from tests.factories import request_change

pytestmark = pytest.mark.django_db


@pytest.fixture
def schedule(demo):
    return CabSchedule.objects.create(
        name="Production CAB", environment=Environment.objects.get(slug="production"),
        weekday=(clock.now().weekday() + 2) % 7, time=time(10, 0), timezone="Europe/Berlin",
        duration_minutes=60, chair=demo.cab)


@pytest.fixture
def meeting(schedule):
    return services.meeting_next(schedule)


def in_room(meeting, demo, *people):
    for name in people:
        services.attendance_mark(meeting=meeting, user=getattr(demo, name), present=True,
                                 actor=demo.cab)


def prod(demo, at=None):
    """A production change waiting for its gates, to start at ``at`` (None: no time yet)."""
    change = request_change(demo.engineer, "production")
    if at is not None:
        ChangeRequest.objects.filter(pk=change.pk).update(scheduled_for=at)
        change.refresh_from_db()
    return change


def item_of(meeting, change):
    return CabAgendaItem.objects.get(meeting=meeting, change=change)


def test_next_meeting_is_on_the_schedules_weekday_and_local_time_and_made_once(schedule):
    meeting = services.meeting_next(schedule)
    local = meeting.starts_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.weekday(), local.hour, local.minute) == (schedule.weekday, 10, 0)
    assert meeting.starts_at > clock.now()
    assert meeting.ends_at - meeting.starts_at == timedelta(minutes=60)
    assert services.meeting_next(schedule) == meeting
    assert CabMeeting.objects.filter(schedule=schedule).count() == 1


def test_a_schedule_refuses_a_time_zone_that_does_not_exist(schedule):
    from django.core.exceptions import ValidationError

    schedule.timezone = "Mars/Olympus"
    with pytest.raises(ValidationError):
        schedule.full_clean()


def test_agenda_holds_the_changes_waiting_for_cab_before_the_following_meeting(
        demo, meeting):
    unscheduled = prod(demo)
    soon = prod(demo, meeting.starts_at + timedelta(days=2))
    later = prod(demo, meeting.starts_at + timedelta(days=8))
    staging = request_change(demo.engineer, "staging")
    decided = prod(demo)
    services.gate_approve(actor=demo.cab2, change=decided, role="cab")

    items = services.agenda_build(meeting)

    assert [i.change_id for i in items] == [unscheduled.pk, soon.pk]
    assert {later.pk, staging.pk, decided.pk}.isdisjoint(i.change_id for i in items)
    # Built again: the same items, none twice.
    assert [i.change_id for i in services.agenda_build(meeting)] == [unscheduled.pk, soon.pk]


def test_agenda_orders_by_window_then_the_highest_risk_score_first(demo, meeting):
    at = meeting.starts_at + timedelta(days=1)
    low = prod(demo, at)
    high = prod(demo, at)
    first = prod(demo, at - timedelta(hours=1))
    high.risk_assessments.update(score=95)
    low.risk_assessments.update(score=5)
    first.risk_assessments.update(score=1)

    items = services.agenda_build(meeting)

    assert [i.change_id for i in items] == [first.pk, high.pk, low.pk]


def test_chair_adds_and_defers_items_on_the_record_and_nobody_else_may(demo, meeting):
    change = prod(demo, meeting.starts_at + timedelta(days=20))
    with pytest.raises(Refused) as refused:
        services.agenda_item_add(meeting=meeting, change=change, actor=demo.cab2)
    assert refused.value.code == "not_chair"

    item = services.agenda_item_add(meeting=meeting, change=change, actor=demo.cab)
    assert item.source == "added"
    assert change.pk in [i.change_id for i in services.agenda_build(meeting)]
    with pytest.raises(Invalid):
        services.agenda_item_defer(item=item, reason=" ", actor=demo.cab)
    services.agenda_item_defer(item=item, reason="waiting for the load test", actor=demo.cab)

    item.refresh_from_db()
    assert item.deferred and item.defer_reason == "waiting for the load test"
    actions = list(AuditEvent.objects.filter(object_id=str(change.pk))
                   .values_list("action", flat=True))
    assert "cab.agenda_item_added" in actions and "cab.agenda_item_deferred" in actions


def test_only_the_chair_takes_the_attendance(demo, meeting):
    with pytest.raises(Refused):
        services.attendance_mark(meeting=meeting, user=demo.cab2, present=True,
                                 actor=demo.cab2)
    services.attendance_mark(meeting=meeting, user=demo.cab2, present=True, actor=demo.cab)
    meeting.refresh_from_db()
    assert meeting.status == "in_progress"
    assert AuditEvent.objects.filter(action="cab.attendance_marked").count() == 1


def test_a_member_absent_from_the_meeting_may_not_decide_in_it(demo, meeting):
    change = prod(demo)
    services.agenda_build(meeting)
    in_room(meeting, demo, "cab")
    services.attendance_mark(meeting=meeting, user=demo.cab2, present=False, actor=demo.cab)
    with pytest.raises(Refused) as refused:
        services.meeting_decide(meeting=meeting, item=item_of(meeting, change),
                                decision="approve", actor=demo.cab2)
    assert refused.value.code == "not_present"
    assert change.gates.get(role="cab").status == "pending"
    record = AuditEvent.objects.get(action="cab.item_decided.refused")
    assert record.actor_name == "cab2" and record.after["code"] == "not_present"


def test_no_decision_without_quorum(demo, meeting):
    change = prod(demo)
    Gate.objects.filter(change=change, role="cab").update(required=2)
    services.agenda_build(meeting)
    in_room(meeting, demo, "cab")
    with pytest.raises(Conflict) as refused:
        services.meeting_decide(meeting=meeting, item=item_of(meeting, change),
                                decision="approve", actor=demo.cab)
    assert refused.value.code == "no_quorum" and refused.value.status == 409
    assert not change.approvals.exists()
    in_room(meeting, demo, "cab2")
    services.meeting_decide(meeting=meeting, item=item_of(meeting, change),
                            decision="approve", actor=demo.cab)
    assert change.approvals.get().approver == demo.cab
    # The gate needs a second approval: the item waits for the next member's.
    assert item_of(meeting, change).decision == ""
    services.meeting_decide(meeting=meeting, item=item_of(meeting, change),
                            decision="approve", actor=demo.cab2)
    assert change.gates.get(role="cab").status == "approved"
    assert item_of(meeting, change).decision == "approve"
    services.meeting_close(meeting=meeting, actor=demo.cab)
    minutes = AuditEvent.objects.get(action="cab.minutes").after
    assert minutes["items"][0]["cab_approvals"] == ["cab", "cab2"]


def test_present_members_decide_through_the_cab_gate_and_the_minutes_record_it(
        demo, meeting):
    approved = prod(demo)
    rejected = prod(demo)
    deferred = prod(demo)
    services.agenda_build(meeting)
    in_room(meeting, demo, "cab", "cab2")

    services.meeting_decide(meeting=meeting, item=item_of(meeting, approved),
                            decision="approve", actor=demo.cab, comment="fine")
    services.meeting_decide(meeting=meeting, item=item_of(meeting, rejected),
                            decision="reject", actor=demo.cab2, comment="no rollback test")
    with pytest.raises(Invalid):
        services.meeting_decide(meeting=meeting, item=item_of(meeting, deferred),
                                decision="defer", actor=demo.cab2)
    services.meeting_decide(meeting=meeting, item=item_of(meeting, deferred),
                            decision="defer", actor=demo.cab2, comment="next week")

    assert approved.gates.get(role="cab").status == "approved"
    rejected.refresh_from_db()
    assert rejected.status == ChangeRequest.Status.REJECTED
    assert deferred.gates.get(role="cab").status == "pending"
    assert item_of(meeting, deferred).defer_reason == "next week"
    with pytest.raises(Refused):
        services.meeting_close(meeting=meeting, actor=demo.cab2)

    services.meeting_close(meeting=meeting, actor=demo.cab)

    minutes = AuditEvent.objects.get(action="cab.minutes").after
    assert minutes["attendees"] == ["cab", "cab2"]
    assert {(i["change"], i["decision"], i["comment"]) for i in minutes["items"]} == {
        (approved.reference, "approve", "fine"),
        (rejected.reference, "reject", "no rollback test"),
        (deferred.reference, "defer", "next week")}
    meeting.refresh_from_db()
    assert meeting.status == "closed"
    following = services.meeting_next(meeting.schedule)
    assert following.starts_at == meeting.starts_at + timedelta(days=7)
    with pytest.raises(Conflict) as closed:
        services.attendance_mark(meeting=meeting, user=demo.cab2, present=True,
                                 actor=demo.cab)
    assert closed.value.code == "meeting_closed"


# --- pages, documents and the API --------------------------------------------------------


def test_members_decide_on_the_page_each_with_their_own_second_factor(demo, meeting):
    from django.test import Client

    from tests.conftest import sign_in_with_second_factor

    first, second = prod(demo), prod(demo)
    services.agenda_build(meeting)
    chair = Client()
    chair.force_login(demo.cab)
    url = f"/cab/meetings/{meeting.pk}/"
    chair.post(url + "attendance", {"member": [demo.cab.pk, demo.cab2.pk],
                                    "present": [demo.cab.pk, demo.cab2.pk]})
    assert services.present_members(meeting) == {demo.cab.pk, demo.cab2.pk}

    # Signed in without a fresh second factor: sent to the check, nothing decided.
    unchecked = Client()
    unchecked.force_login(demo.cab2)
    response = unchecked.post(f"{url}items/{item_of(meeting, first).pk}/decide",
                              {"decision": "approve"})
    assert response.status_code in (302, 303)
    assert not first.approvals.exists()

    for member, change in ((demo.cab, first), (demo.cab2, second)):
        client = sign_in_with_second_factor(Client(), member)
        client.post(f"{url}items/{item_of(meeting, change).pk}/decide",
                    {"decision": "approve", "comment": f"ok from {member}"})
    assert first.approvals.get().approver == demo.cab
    assert second.approvals.get().approver == demo.cab2
    event = AuditEvent.objects.filter(action="gate.approved", object_id=str(second.pk)).get()
    assert event.after["second_factor"]["via"] == "session"

    page = chair.get(url).content.decode()
    assert "approve by cab2" in page and "Close meeting" in page
    chair.post(url + "close")
    minutes = chair.get(url + "minutes.pdf")
    assert minutes["Content-Type"] == "application/pdf"
    assert minutes.content.startswith(b"%PDF")
    for text in (b"cab2", first.reference.encode(), b"ok from cab2", b"approve"):
        assert text in minutes.content


def test_the_board_pages_are_for_its_members(demo, client, meeting):
    client.force_login(demo.engineer)
    assert client.get("/cab/").status_code == 404
    assert client.get(f"/cab/meetings/{meeting.pk}/").status_code == 404
    assert 'href="/cab/"' not in client.get("/changes/").content.decode()
    client.force_login(demo.cab2)
    page = client.get("/cab/").content.decode()
    assert 'href="/cab/"' in page and "Production CAB" in page
    # Not the chair: no attendance checkboxes, no close button.
    detail = client.get(f"/cab/meetings/{meeting.pk}/").content.decode()
    assert "data-attendance" not in detail and "Close meeting" not in detail


def test_next_meeting_calendar_entry(demo, client, meeting):
    following = services.meeting_next(meeting.schedule, after=meeting.starts_at)
    client.force_login(demo.cab)
    response = client.get(f"/cab/meetings/{meeting.pk}/next.ics")
    assert response["Content-Type"].startswith("text/calendar")
    body = response.content.decode()
    lines = body.split("\r\n")
    assert body.endswith("\r\n") and "\n" not in body.replace("\r\n", "")
    assert lines[0] == "BEGIN:VCALENDAR" and "BEGIN:VEVENT" in lines
    start = following.starts_at.astimezone(__import__("datetime").UTC)
    assert f"DTSTART:{start:%Y%m%dT%H%M%SZ}" in lines
    assert f"DTEND:{following.ends_at.astimezone(start.tzinfo):%Y%m%dT%H%M%SZ}" in lines
    assert any(line.startswith("UID:cab-") for line in lines)
    assert "SUMMARY:Production CAB" in lines
    assert all(len(line.encode()) <= 75 for line in lines)


def test_api_lists_meetings_and_gives_an_agenda_with_risk_and_conflicts(demo, api, meeting):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    change = prod(demo)
    prod(demo)
    services.agenda_build(meeting)
    client = api(demo.cab)

    body = client.get(f"/api/v1/cab/meetings/{meeting.pk}/").json()
    assert body["environment"] == "production" and body["status"] == "planned"
    item = next(i for i in body["items"] if i["change"] == change.pk)
    assert item["risk_score"] == change.risk_assessments.first().score
    assert item["decision"] == "" and isinstance(item["conflicts"], list)
    assert any(c["kind"] == "same_application" for c in item["conflicts"])
    assert api(demo.engineer).get(f"/api/v1/cab/meetings/{meeting.pk}/").status_code == 404

    def count():
        with CaptureQueriesContext(connection) as ctx:
            response = client.get("/api/v1/cab/meetings/")
        assert response.status_code == 200
        return len(ctx.captured_queries), response.json()["results"]

    few, results = count()
    assert [r["id"] for r in results] == [meeting.pk]
    for _ in range(3):
        meeting = services.meeting_next(meeting.schedule, after=meeting.starts_at)
        services.agenda_build(meeting)
    more, results = count()
    assert len(results) == 4 and more == few


def test_the_schema_describes_the_meetings_api():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert {"/api/v1/cab/meetings/", "/api/v1/cab/meetings/{id}/"} <= set(schema["paths"])
    item = schema["components"]["schemas"]["CabAgendaItemOut"]["properties"]
    assert {"change", "risk_score", "conflicts", "decision"} <= set(item)


def test_the_beat_plans_meetings_and_sends_each_agenda_once_before_it(demo, schedule):
    from approvals import tasks
    from notifications.models import Notification

    change = prod(demo)
    tasks.cab_meetings_plan()
    meeting = CabMeeting.objects.get(schedule=schedule)
    assert [i.change_id for i in meeting.items.all()] == [change.pk]
    # The meeting is more than a day (its lead) away: no agenda sent yet.
    assert meeting.agenda_sent_at is None

    lead = timedelta(hours=schedule.agenda_lead_hours)
    early = meeting.starts_at - lead - timedelta(minutes=1)
    CabMeeting.objects.filter(pk=meeting.pk).update(agenda_sent_at=None)
    assert services.meetings_send_agendas(at=early) == []
    sent = services.meetings_send_agendas(at=meeting.starts_at - lead)
    assert sent == [meeting]
    assert services.meetings_send_agendas(at=meeting.starts_at - lead) == []

    rows = Notification.objects.filter(event_key=f"cab_meeting:{meeting.pk}:agenda")
    assert {"cab", "cab2"} <= set(rows.values_list("recipient_name", flat=True))
    assert change.reference in rows.first().body
    assert AuditEvent.objects.filter(action="cab.agenda_sent",
                                     object_id=str(meeting.pk)).count() == 1


def test_the_agenda_page_costs_the_same_queries_with_more_items(demo, client, meeting):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count():
        services.agenda_build(meeting)
        client.get(url)
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200
        return len(ctx.captured_queries), response.content.decode().count('class="card cab-item"')

    url = f"/cab/meetings/{meeting.pk}/"
    client.force_login(demo.cab)
    in_room(meeting, demo, "cab", "cab2")
    prod(demo)
    prod(demo, at=meeting.starts_at + timedelta(days=1))
    few, items = count()
    assert items == 2
    for _ in range(4):
        prod(demo)
    more, items = count()
    assert items == 6 and more == few
