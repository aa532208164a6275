"""A CAB meeting in Chromium: the chair opens the agenda and takes the attendance, two
members each decide an item after their own second-factor check, the chair closes the
meeting and its minutes are on the trail and in the PDF."""

from datetime import time

import pytest
from playwright.sync_api import expect

from approvals import services
from approvals.models import CabSchedule
from audit.models import AuditEvent
from catalog.models import Environment
from tests.factories import request_change

pytestmark = pytest.mark.django_db(transaction=True)


def test_chair_runs_a_meeting_where_two_members_decide(demo_live, live_server, page, login,
                                                       screenshot):
    schedule = CabSchedule.objects.create(
        name="Production CAB", environment=Environment.objects.get(slug="production"),
        weekday=3, time=time(10), timezone="Europe/Berlin", chair=demo_live.cab)
    first = request_change(demo_live.engineer, "production", rollback_plan="Redeploy 1.0")
    second = request_change(demo_live.engineer, "production")
    meeting = services.meeting_next(schedule)
    services.agenda_build(meeting)
    url = f"{live_server.url}/cab/meetings/{meeting.pk}/"

    login("cab")
    page.goto(f"{live_server.url}/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="CAB").click()
    page.get_by_role("link", name="Production CAB").first.click()
    expect(page.locator(f"[data-change='{first.pk}']")).to_contain_text("Redeploy 1.0")
    page.locator("[data-attendance=cab]").check()
    page.locator("[data-attendance=cab2]").check()
    page.get_by_role("button", name="Save attendance").click()
    expect(page.get_by_text("Attendance saved.")).to_be_visible()
    screenshot("cab-meeting-agenda")

    item = page.locator(f"[data-change='{first.pk}']")
    item.get_by_label("Comment").fill("rollback plan is sound")
    item.get_by_role("button", name="Approve").click()
    expect(page.locator(f"[data-change='{first.pk}'] [data-decision]")).to_contain_text(
        "approve by cab")

    chair_session = page.context.cookies()
    page.context.clear_cookies()
    login("cab2")
    page.goto(url)
    item = page.locator(f"[data-change='{second.pk}']")
    item.get_by_label("Comment").fill("no load test yet")
    item.get_by_role("button", name="Reject").click()
    expect(page.locator(f"[data-change='{second.pk}'] [data-decision]")).to_contain_text(
        "reject by cab2")

    page.context.clear_cookies()
    page.context.add_cookies(chair_session)  # the chair, still in the room
    page.goto(url)
    page.get_by_role("button", name="Close meeting").click()
    expect(page.get_by_text("The meeting is closed")).to_be_visible()
    minutes = AuditEvent.objects.get(action="cab.minutes").after
    assert minutes["attendees"] == ["cab", "cab2"]
    assert {i["decided_by"] for i in minutes["items"]} == {"cab", "cab2"}
    pdf = page.request.get(f"{url}minutes.pdf")
    assert pdf.ok and b"no load test yet" in pdf.body()
    for change, approver in ((first, "cab"), (second, "cab2")):
        event = AuditEvent.objects.get(action__in=["gate.approved", "gate.rejected"],
                                       object_id=str(change.pk))
        assert event.actor_name == approver and event.after["second_factor"]["fresh"]
