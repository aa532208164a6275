"""The quality of approvals (docs/cab.md): reviews or rubber stamps, on histories
placed in time with ``core.clock.use``."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals import services
from approvals.models import ChangeView
from audit.models import AuditEvent
from core import clock
from reporting.audit_selectors import approval_quality
from tests.factories import request_change

PAGE = "/audit/approval-quality/"
CSV = "/audit/approval-quality.csv"


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def move(self, **delta) -> datetime:
        self.at += timedelta(**delta)
        return self.at


@pytest.fixture
def start():
    """Ten days ago at 09:00 UTC: inside the default period of the last 90 days."""
    day = (datetime.now(UTC) - timedelta(days=10)).date()
    return datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)


@pytest.fixture
def techlead2(demo):
    """A second tech lead, in the same groups as the first."""
    user = get_user_model().objects.create(username="techlead2")
    user.groups.set(demo.techlead.groups.all())
    return user


def _open_page(client, user, change) -> None:
    client.force_login(user)
    assert client.get(f"/changes/{change.pk}/").status_code == 200


def _row(figures, username, role):
    return next(r for r in figures.rows if r.approver == username and r.role == role)


def _figures(start, days=1):
    return approval_quality(since=start - timedelta(days=days), until=start + timedelta(days=days))


def _careful_and_rubber_stamp(demo, client, start, changes=3):
    """Each change: QA approves 30 s after submission without opening it; the tech lead
    opens the page after 5 minutes and approves after 20."""
    t = Clock(start)
    with clock.use(t):
        for _ in range(changes):
            change = request_change(demo.engineer)
            t.move(seconds=30)
            services.gate_approve(actor=demo.qa, change=change, role="qa")
            t.move(minutes=5)
            _open_page(client, demo.techlead, change)
            t.move(minutes=15, seconds=-30)
            services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
            t.move(hours=1)


def test_a_rubber_stamp_approver_is_flagged_and_a_careful_one_is_not(demo, client, start):
    _careful_and_rubber_stamp(demo, client, start)

    figures = _figures(start)
    qa, lead = _row(figures, "qa", "qa"), _row(figures, "techlead", "tech_lead")
    assert (qa.decisions, qa.approvals, qa.fast, qa.unopened) == (3, 3, 3, 3)
    assert qa.median_seconds == 30 and qa.flagged
    assert (lead.decisions, lead.fast, lead.unopened) == (3, 0, 0)
    assert lead.median_seconds == lead.p90_seconds == 20 * 60 and not lead.flagged

    client.force_login(demo.auditor)
    page = client.get(PAGE).content.decode()
    assert page.count("data-flagged") == 1
    assert "Rubber stamp?" in page and "20 min" in page and "30 s" in page


def test_opening_the_page_after_deciding_does_not_count_as_reading_it(demo, client, start):
    t = Clock(start)
    with clock.use(t):
        change = request_change(demo.engineer)
        t.move(minutes=10)
        services.gate_approve(actor=demo.qa, change=change, role="qa")
        t.move(minutes=1)
        _open_page(client, demo.qa, change)
    qa = _row(_figures(start), "qa", "qa")
    assert (qa.fast, qa.unopened, qa.flagged) == (0, 1, True)


def test_an_approval_through_the_api_counts_as_given_without_opening_the_page(
        demo, api, start):
    """Reading a change through the API is not opening its page: only people open pages."""
    t = Clock(start)
    with clock.use(t):
        change = request_change(demo.engineer)
        t.move(minutes=30)
        client = api(demo.qa)
        assert client.get(f"/api/v1/changes/{change.pk}/").status_code == 200
        answer = client.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                             format="json")
        assert answer.status_code == 200, answer.content
    assert not ChangeView.objects.exists()
    qa = _row(_figures(start), "qa", "qa")
    assert (qa.approvals, qa.fast, qa.unopened, qa.flagged) == (1, 0, 1, True)


def test_time_to_decide_runs_from_the_gates_reopening(demo, client, start):
    """A withdrawn approval reopens its gate: the next decision is timed from then."""
    t = Clock(start)
    with clock.use(t):
        change = request_change(demo.engineer)
        _open_page(client, demo.techlead, change)
        t.move(minutes=10)
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
        t.move(hours=1)
        services.approval_withdraw(actor=demo.techlead, change=change, role="tech_lead")
        t.move(minutes=2)
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    lead = _row(_figures(start), "techlead", "tech_lead")
    assert lead.decisions == 2
    # 600 s from submission, 120 s from the reopening: median 360, p90 552.
    assert lead.median_seconds == 360
    assert lead.p90_seconds == pytest.approx(600 - 0.1 * 480)


def test_reciprocal_pairs_are_found_and_one_directional_ones_are_not(demo, start, techlead2):
    t = Clock(start)
    with clock.use(t):
        for requester, approver in [(demo.techlead, techlead2), (demo.techlead, techlead2),
                                    (techlead2, demo.techlead),
                                    # One way only: the engineer never approves.
                                    (demo.engineer, demo.techlead)]:
            change = request_change(requester)
            t.move(minutes=5)
            services.gate_approve(actor=approver, change=change, role="tech_lead")
    pairs = _figures(start).pairs
    assert [(p.first, p.second, p.first_approved_second, p.second_approved_first)
            for p in pairs] == [("techlead", "techlead2", 1, 2)]


def test_concentration_is_exact_on_a_small_history(demo, start, techlead2):
    """Tech lead gate: techlead decides 3, techlead2 1 (one of them a rejection)."""
    t = Clock(start)
    with clock.use(t):
        for approver in [demo.techlead, demo.techlead, demo.techlead, techlead2]:
            change = request_change(demo.engineer)
            t.move(minutes=5)
            if approver == techlead2:
                services.gate_reject(actor=approver, change=change, role="tech_lead",
                                     comment="No rollback tested.")
            else:
                services.gate_approve(actor=approver, change=change, role="tech_lead")
    figures = _figures(start)
    gate = figures.concentration["tech_lead"]
    assert (gate.decisions, gate.approvers, gate.top_approver) == (4, 2, "techlead")
    assert gate.top_share == 0.75
    assert gate.hhi == 0.75 ** 2 + 0.25 ** 2
    assert _row(figures, "techlead2", "tech_lead").rejections == 1


def test_the_period_filter_keeps_only_decisions_inside_it(demo, client, start):
    t = Clock(start - timedelta(days=100))
    with clock.use(t):
        old = request_change(demo.engineer)
        t.move(minutes=1)
        services.gate_approve(actor=demo.qa, change=old, role="qa")
        t.at = start
        recent = request_change(demo.engineer)
        t.move(minutes=1)
        services.gate_approve(actor=demo.qa, change=recent, role="qa")
    client.force_login(demo.auditor)

    # By default the last 90 days: only the recent decision.
    default = client.get(PAGE)
    assert _row(default.context["figures"], "qa", "qa").decisions == 1
    old_day = (start - timedelta(days=100)).date().isoformat()
    both = client.get(PAGE, {"from": old_day})
    assert _row(both.context["figures"], "qa", "qa").decisions == 2
    only_old = client.get(PAGE, {"from": old_day, "to": old_day})
    assert _row(only_old.context["figures"], "qa", "qa").decisions == 1
    assert only_old.context["figures"].rows[0].median_seconds == 60
    # A period that ends before it starts is refused, not guessed at.
    assert client.get(PAGE, {"from": "2026-02-02", "to": "2026-02-01"}).status_code == 400
    assert client.get(CSV, {"from": "not a day"}).status_code == 400


def test_views_are_recorded_once_a_minute_not_once_a_request(demo, client, start):
    t = Clock(start)
    with clock.use(t):
        change = request_change(demo.engineer)
        client.force_login(demo.qa)
        url = f"/changes/{change.pk}/"
        client.get(url)
        client.get(url)
        t.move(seconds=60)  # the next minute: a new row
        with CaptureQueriesContext(connection) as adding:
            client.get(url)
        t.move(seconds=30)  # the same minute: nothing more
        with CaptureQueriesContext(connection) as again:
            client.get(url)
    views = list(ChangeView.objects.filter(change=change).order_by("at"))
    assert [(v.user_id, v.kind, v.at) for v in views] == [
        (demo.qa.pk, "page", start), (demo.qa.pk, "page", start + timedelta(seconds=60))]
    # One statement, whether it adds a row or not.
    inserts = [q["sql"] for q in again.captured_queries if "approvals_changeview" in q["sql"]]
    assert len(inserts) == 1 and "ON CONFLICT DO NOTHING" in inserts[0]
    assert len(adding.captured_queries) == len(again.captured_queries)


def test_the_csv_holds_the_page_figures(demo, client, start, techlead2):
    _careful_and_rubber_stamp(demo, client, start, changes=2)
    t = Clock(start + timedelta(hours=5))
    with clock.use(t):
        change = request_change(techlead2)
        t.move(minutes=3)
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
        change = request_change(demo.techlead)
        t.move(minutes=3)
        services.gate_approve(actor=techlead2, change=change, role="tech_lead")
    client.force_login(demo.auditor)
    figures = client.get(PAGE).context["figures"]
    response = client.get(CSV)
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))

    assert [(r["approver"], r["gate"]) for r in rows] == [
        (f.approver, f.role) for f in figures.rows]
    for line, row in zip(rows, figures.rows, strict=True):
        gate = figures.concentration[row.role]
        assert line["decisions"] == str(row.decisions)
        assert line["approved_within_60s"] == str(row.fast)
        assert line["approved_without_opening"] == str(row.unopened)
        assert line["median_seconds_to_decision"] == str(round(row.median_seconds, 1))
        assert line["flagged"] == ("yes" if row.flagged else "no")
        assert float(line["gate_herfindahl"]) == round(gate.hhi, 4)
    by_person = {(r["approver"], r["gate"]): r for r in rows}
    assert by_person[("qa", "qa")]["flagged"] == "yes"
    assert by_person[("techlead", "tech_lead")]["approves_each_other_with"] == "techlead2: 1/1"
    assert by_person[("qa", "qa")]["approves_each_other_with"] == ""
    # Who took a copy, and of which period, is on the record (SOP 13.1).
    event = AuditEvent.objects.get(action="approval_quality.exported")
    assert event.actor_name == "auditor" and event.after["format"] == "csv"


@pytest.mark.parametrize("username", ["engineer", "techlead", "cab", "qa"])
def test_people_who_are_not_auditors_are_refused(demo, client, username):
    client.force_login(getattr(demo, username))
    assert client.get(PAGE).status_code == 403
    assert client.get(CSV).status_code == 403
    assert not AuditEvent.objects.filter(action="approval_quality.exported").exists()


def test_signed_out_visitors_are_sent_to_sign_in(client, demo):
    assert client.get(PAGE)["Location"].startswith("/login/")


def test_the_audit_area_links_the_page(demo, client):
    client.force_login(demo.auditor)
    assert f'href="{PAGE}"' in client.get("/audit/").content.decode()


def test_the_page_costs_the_same_queries_as_decisions_grow(demo, client, start, techlead2):
    client.force_login(demo.auditor)

    def count() -> int:
        client.get(PAGE)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(PAGE).status_code == 200
        return len(ctx.captured_queries)

    _careful_and_rubber_stamp(demo, client, start, changes=1)
    client.force_login(demo.auditor)
    few = count()
    _careful_and_rubber_stamp(demo, client, start + timedelta(days=1), changes=6)
    t = Clock(start + timedelta(days=2))
    with clock.use(t):
        for requester, approver in [(demo.techlead, techlead2), (techlead2, demo.techlead)]:
            change = request_change(requester)
            t.move(minutes=5)
            services.gate_approve(actor=approver, change=change, role="tech_lead")
    client.force_login(demo.auditor)
    page = client.get(PAGE)
    assert len(page.context["figures"].rows) == 3 and page.context["figures"].pairs
    assert count() == few
