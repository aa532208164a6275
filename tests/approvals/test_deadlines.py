"""Deadlines on approvals (docs/cab.md): approve-by on gates, start-by once
approved, the warning before each, and the beat that enforces them. Time is driven with
``core.clock.use``; nothing here sleeps."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from approvals import services, tasks
from approvals.models import Approval, ApprovalPolicy, ChangeRequest, Gate
from audit.models import AuditEvent
from core import clock
from core.errors import Conflict, NotReady
from notifications.models import Notification
from tests.factories import request_change

STAGING = {"environment__slug": "staging", "change_type": "standard"}


class Clock:
    """A clock the test moves by hand; ``per_thread`` gives a thread its own time."""

    def __init__(self):
        self.at = timezone.now().replace(microsecond=0)
        self.per_thread: dict[str, object] = {}

    def __call__(self):
        return self.per_thread.get(threading.current_thread().name, self.at)

    def move(self, **delta):
        self.at += timedelta(**delta)


@pytest.fixture
def now():
    source = Clock()
    with clock.use(source):
        yield source


def policy(**fields) -> ApprovalPolicy:
    p = ApprovalPolicy.objects.get(**STAGING)
    for name, value in fields.items():
        setattr(p, name, value)
    p.save()
    return p


def deadline_messages(change, to: str | None = None, event: str | None = None):
    rows = Notification.objects.filter(change_id=change.pk, kind="deadline")
    if event:
        rows = rows.filter(fields__deadline=event)
    return rows.filter(recipient_name=to) if to else rows


def actions(change) -> list[str]:
    return list(AuditEvent.objects.filter(object_type="changerequest", object_id=str(change.pk))
                .order_by("id").values_list("action", flat=True))


# Approve-by ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_submission_sets_each_gate_to_be_decided_within_the_policy_hours(demo, now):
    policy(approve_within_hours=48)
    change = request_change(demo.engineer, "staging")
    assert {g.expires_at for g in change.gates.all()} == {now.at + timedelta(hours=48)}
    policy(approve_within_hours=None)
    other = request_change(demo.engineer, "staging")
    assert {g.expires_at for g in other.gates.all()} == {None}


@pytest.mark.django_db
def test_nothing_expires_before_the_approve_by_time(demo, now):
    policy(approve_within_hours=4)
    change = request_change(demo.engineer, "staging")
    now.move(hours=3, minutes=59)
    assert services.deadlines_enforce()["expired"] == []
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert "gate.expired" not in actions(change)


@pytest.mark.django_db
def test_a_gate_not_decided_in_time_expires_and_the_change_goes_back_to_its_requester(
        demo, now):
    policy(approve_within_hours=4)
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    now.move(hours=4)
    assert services.deadlines_enforce()["expired"] == [change.pk]
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DRAFT
    gates = {g.role: g.status for g in change.gates.all()}
    assert gates == {"tech_lead": "approved", "qa": "expired"}
    event = AuditEvent.objects.get(action="gate.expired", object_id=str(change.pk))
    assert event.after["expired"] == ["qa"] and event.actor_name.startswith("system")
    assert deadline_messages(change, "engineer", "expired").count() == 1
    # A second beat finds nothing left to expire.
    assert services.deadlines_enforce()["expired"] == []
    # Deciding the expired gate is refused with its own code.
    with pytest.raises(Conflict) as refused:
        services.gate_approve(actor=demo.qa, change=change, role="qa")
    assert refused.value.code == "gate_expired"
    # The requester resubmits: the expired gate opens again with a new approve-by time,
    # the approved one stands.
    now.move(minutes=5)
    services.change_request_submit(actor=demo.engineer, change=change)
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    qa = change.gates.get(role="qa")
    assert (qa.status, qa.expires_at) == ("pending", now.at + timedelta(hours=4))
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED


@pytest.mark.django_db
def test_a_gate_reopened_by_an_edit_in_draft_gets_a_new_approve_by_time(demo, now):
    policy(approve_within_hours=4)
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    now.move(hours=4)
    services.deadlines_enforce()
    services.change_request_update(actor=demo.engineer, change=change,
                                   rollback_plan="Redeploy the previous version.")
    assert change.gates.get(role="tech_lead").status == "pending"
    services.change_request_submit(actor=demo.engineer, change=change)
    assert {(g.status, g.expires_at) for g in change.gates.all()} == {
        ("pending", now.at + timedelta(hours=4))}
    now.move(hours=1)
    assert services.deadlines_enforce()["expired"] == []


@pytest.mark.django_db
def test_a_decision_after_the_approve_by_time_is_refused_before_the_beat_runs(demo, now):
    policy(approve_within_hours=4)
    change = request_change(demo.engineer, "staging")
    now.move(hours=4, seconds=1)
    with pytest.raises(Conflict) as refused:
        services.gate_approve(actor=demo.qa, change=change, role="qa")
    assert refused.value.code == "gate_expired"
    assert not Approval.objects.filter(change=change).exists()
    assert AuditEvent.objects.get(action="gate.approved.refused",
                                  object_id=str(change.pk)).after["code"] == "gate_expired"


# Start-by -----------------------------------------------------------------------------------

def approved_staging_change(demo, **kw):
    change = request_change(demo.engineer, "staging", **kw)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    return change


@pytest.mark.django_db
def test_production_policies_give_seven_days_to_start(demo):
    days = set(ApprovalPolicy.objects.filter(environment__slug="production")
               .values_list("execute_within_days", flat=True))
    assert days == {7}
    assert set(ApprovalPolicy.objects.filter(environment__slug="staging")
               .values_list("execute_within_days", flat=True)) == {None}


@pytest.mark.django_db
def test_approval_sets_the_start_by_time_and_its_lapse_withdraws_every_approval(demo, now):
    policy(execute_within_days=2, approve_within_hours=24)
    change = approved_staging_change(demo)
    assert change.status == ChangeRequest.Status.APPROVED
    assert change.execute_by == now.at + timedelta(days=2)
    now.move(days=1, hours=23)
    assert services.deadlines_enforce()["lapsed"] == []
    now.move(hours=1)
    assert services.deadlines_enforce()["lapsed"] == [change.pk]
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    gates = list(change.gates.all())
    assert {g.status for g in gates} == {"pending"}
    # The reopened gates have a new approve-by time of the policy.
    assert {g.expires_at for g in gates} == {now.at + timedelta(hours=24)}
    withdrawn = Approval.objects.filter(change=change)
    assert {a.withdrawn_reason for a in withdrawn} == {
        f"approval lapsed: not started by {now.at:%Y-%m-%d %H:%M} UTC"}
    assert all(a.withdrawn_at == now.at for a in withdrawn)
    event = AuditEvent.objects.get(action="change.approvals_lapsed", object_id=str(change.pk))
    assert {w["approver"] for w in event.after["withdrawn"]} == {"techlead", "qa"}
    for person in ("engineer", "techlead", "qa"):
        assert deadline_messages(change, person, "lapsed").count() == 1, person
    # Pressing Deploy now says why not.
    with pytest.raises(NotReady) as refused:
        services.change_request_deploy(actor=demo.engineer, change=change)
    assert refused.value.code == "approval_lapsed"
    # Approved again: a new start-by time, and it deploys.
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.execute_by == now.at + timedelta(days=2)
    services.change_request_deploy(actor=demo.engineer, change=change)


@pytest.mark.django_db
def test_a_deploy_press_after_the_start_by_time_is_refused_before_the_beat_runs(demo, now):
    policy(execute_within_days=1)
    change = approved_staging_change(demo)
    now.move(days=1)
    with pytest.raises(NotReady) as refused:
        services.change_request_deploy(actor=demo.engineer, change=change)
    assert refused.value.code == "approval_lapsed"
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert "change.deploy.refused" in actions(change)


@pytest.mark.django_db
def test_a_change_that_started_deploying_does_not_lapse(demo, now):
    policy(execute_within_days=1)
    change = approved_staging_change(demo)
    services.change_request_deploy(actor=demo.engineer, change=change)
    now.move(days=2)
    assert services.deadlines_enforce()["lapsed"] == []
    assert not Approval.objects.filter(change=change, withdrawn_at__isnull=False).exists()


# Warnings -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_warnings_before_each_deadline_are_sent_once(demo, now):
    policy(approve_within_hours=48, execute_within_days=3)
    change = request_change(demo.engineer, "staging")
    now.move(hours=23)
    assert services.deadlines_enforce()["warned_approve_by"] == []
    now.move(hours=1)
    assert services.deadlines_enforce()["warned_approve_by"] == [change.pk]
    assert services.deadlines_enforce()["warned_approve_by"] == []
    # Who may decide the open gates hears it, once.
    assert deadline_messages(change, "qa").count() == 1
    assert deadline_messages(change, "techlead").count() == 1
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    now.move(days=1, hours=23, minutes=59)
    assert services.deadlines_enforce()["warned_start_by"] == []
    now.move(minutes=1)
    assert services.deadlines_enforce()["warned_start_by"] == [change.pk]
    now.move(minutes=1)
    assert services.deadlines_enforce()["warned_start_by"] == []
    start_by = deadline_messages(change, "engineer")
    assert start_by.count() == 1 and start_by.get().fields["deadline"] == "start_by"


@pytest.mark.django_db
def test_a_short_approve_by_window_has_no_warning_and_a_day_one_warns_halfway(demo, now):
    assert services.expiry_warning_lead(2) is None
    assert services.expiry_warning_lead(10) == timedelta(hours=5)
    assert services.expiry_warning_lead(72) == timedelta(hours=24)
    policy(approve_within_hours=2)
    change = request_change(demo.engineer, "staging")
    now.move(hours=1, minutes=59)
    assert services.deadlines_enforce()["warned_approve_by"] == []
    assert not deadline_messages(change).exists()


# The beat task ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_beat_task_enforces_the_deadlines(demo, now):
    policy(approve_within_hours=1)
    change = request_change(demo.engineer, "staging")
    now.move(hours=1)
    tasks.approvals_enforce_deadlines()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DRAFT


def test_the_beat_runs_the_deadline_task_every_minute(settings):
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values()
                 if e["task"] == "approvals.tasks.approvals_enforce_deadlines")
    assert entry["schedule"] == 60.0


# API and pages ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_api_shows_both_deadlines(demo, api, now):
    policy(approve_within_hours=10, execute_within_days=2)
    change = request_change(demo.engineer, "staging")
    body = api(demo.engineer).get(f"/api/v1/changes/{change.pk}/").json()
    due = now.at + timedelta(hours=10)
    assert body["expires_at"] is not None and body["execute_by"] is None
    assert {g["expires_at"] for g in body["gates"]} == {body["expires_at"]}
    assert body["expires_at"].startswith(due.strftime("%Y-%m-%dT%H:%M"))
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    listed = api(demo.engineer).get("/api/v1/changes/?status=approved").json()["results"]
    mine = next(c for c in listed if c["id"] == change.pk)
    assert mine["expires_at"] is None
    assert mine["execute_by"].startswith((now.at + timedelta(days=2)).strftime("%Y-%m-%dT%H"))


@pytest.mark.django_db
def test_an_api_approval_after_the_approve_by_time_answers_409_gate_expired(demo, api, now):
    policy(approve_within_hours=1)
    change = request_change(demo.engineer, "staging")
    now.move(hours=1)
    answer = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                               format="json")
    assert answer.status_code == 409 and answer.json()["code"] == "gate_expired"


@pytest.mark.django_db
def test_the_schema_describes_the_deadline_fields(client):
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert {"expires_at", "execute_by"} <= set(schema["ChangeOut"]["properties"])
    assert "expires_at" in schema["Gate"]["properties"]


@pytest.mark.django_db
def test_the_change_page_and_the_inbox_show_the_deadlines(demo, client, now):
    policy(approve_within_hours=48, execute_within_days=3)
    change = request_change(demo.engineer, "staging")
    due = now.at + timedelta(hours=48)
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{change.pk}/").content.decode()
    assert f"Approve by <time datetime=\"{due:%Y-%m-%dT%H:%M}" in page
    assert "deadline-soon" not in page
    client.force_login(demo.qa)
    inbox = client.get("/approvals/").content.decode()
    assert f"Approve by <time datetime=\"{due:%Y-%m-%dT%H:%M}" in inbox
    now.move(hours=30)
    assert "deadline-soon" in client.get("/approvals/").content.decode()
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{change.pk}/").content.decode()
    start_by = now.at + timedelta(days=3)
    assert f"Start by <time datetime=\"{start_by:%Y-%m-%dT%H:%M}" in page
    assert "Approve by <time" not in page


# Races settled by the change's row lock -----------------------------------------------------

def _held(first, second, clock_source, *, first_at, second_at):
    """``first`` runs in a transaction that stays open until ``second`` waits for the
    change's row lock; returns (first's result or error, second's result or error)."""
    from tests.conftest import wait_for, waiting_for_a_lock

    out: dict[str, object] = {}
    holding = threading.Event()

    def run_first():
        try:
            with transaction.atomic():
                out["first"] = first()
                holding.set()
                wait_for(lambda: waiting_for_a_lock() or "second" in out, timeout=30,
                         interval=0.02)
        except Exception as exc:  # noqa: BLE001 - the outcome is the test's to judge
            out["first"] = exc
        finally:
            holding.set()
            connection.close()

    def run_second():
        holding.wait(30)
        try:
            out["second"] = second()
        except Exception as exc:  # noqa: BLE001
            out["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run_first, name="first"),
               threading.Thread(target=run_second, name="second")]
    clock_source.per_thread.update({"first": first_at, "second": second_at})
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out["first"], out["second"]


@pytest.mark.django_db(transaction=True)
def test_an_approval_racing_the_expiry_lands_before_it_or_is_refused(demo, now):
    policy(approve_within_hours=4)
    deadline = now.at + timedelta(hours=4)
    before, after = deadline - timedelta(seconds=1), deadline + timedelta(seconds=1)

    # The beat holds the change first: the approval that waited is refused.
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    expired, approval = _held(
        lambda: services.change_gates_expire(change_id=change.pk),
        lambda: services.gate_approve(actor=demo.qa, change=change, role="qa"),
        now, first_at=after, second_at=before)
    assert expired is True
    assert isinstance(approval, Conflict) and approval.code == "gate_expired"
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DRAFT
    assert not Approval.objects.filter(change=change, approver=demo.qa).exists()

    # The approval holds it first: it lands and nothing expires.
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approval, expired = _held(
        lambda: services.gate_approve(actor=demo.qa, change=change, role="qa"),
        lambda: services.change_gates_expire(change_id=change.pk),
        now, first_at=before, second_at=after)
    assert isinstance(approval, Gate) and expired is False
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert not AuditEvent.objects.filter(action="gate.expired",
                                         object_id=str(change.pk)).exists()


@pytest.mark.django_db(transaction=True)
def test_a_deploy_press_racing_the_lapse_starts_before_it_or_is_refused(demo, now):
    policy(execute_within_days=1)

    # The lapse holds the change first: the deploy press that waited is refused.
    change = approved_staging_change(demo)
    deadline = change.execute_by
    before, after = deadline - timedelta(seconds=1), deadline + timedelta(seconds=1)
    lapsed, deployed = _held(
        lambda: services.change_approvals_lapse(change_id=change.pk),
        lambda: services.change_request_deploy(actor=demo.engineer, change=change),
        now, first_at=after, second_at=after)
    assert lapsed is True
    assert isinstance(deployed, NotReady) and deployed.code == "approval_lapsed"
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL

    # The deploy press holds it first: it starts, and nothing lapses.
    change = approved_staging_change(demo)
    deadline = change.execute_by
    before, after = deadline - timedelta(seconds=1), deadline + timedelta(seconds=1)
    deployed, lapsed = _held(
        lambda: services.change_request_deploy(actor=demo.engineer, change=change),
        lambda: services.change_approvals_lapse(change_id=change.pk),
        now, first_at=before, second_at=after)
    assert lapsed is False and not isinstance(deployed, Exception)
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    assert not Approval.objects.filter(change=change, withdrawn_at__isnull=False).exists()


@pytest.mark.django_db
def test_the_change_list_and_the_inbox_cost_the_same_queries_with_more_deadlines(
        demo, api, client, now):
    from django.test.utils import CaptureQueriesContext

    policy(approve_within_hours=48, execute_within_days=3)

    def count(reader, url):
        reader.get(url)  # the first view fills per-process caches
        with CaptureQueriesContext(connection) as ctx:
            assert reader.get(url).status_code == 200
        return len(ctx.captured_queries)

    client.force_login(demo.qa)
    reader = api(demo.qa)
    approved_staging_change(demo)
    request_change(demo.engineer, "staging")
    few = (count(reader, "/api/v1/changes/"), count(client, "/approvals/"))
    for _ in range(4):
        approved_staging_change(demo)
        request_change(demo.engineer, "staging")
    assert (count(reader, "/api/v1/changes/"), count(client, "/approvals/")) == few
    listed = reader.get("/api/v1/changes/?environment=staging").json()["results"]
    assert sum(1 for c in listed if c["expires_at"]) == 5
    assert sum(1 for c in listed if c["execute_by"]) == 5
