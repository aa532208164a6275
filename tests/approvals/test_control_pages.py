"""Pages for the controls: calendar, environment locks, delegations, checklist, edit, withdraw."""

from datetime import UTC, datetime, timedelta

from django.utils import timezone

from approvals import services
from approvals.models import ChangeRequest, Delegation, Freeze
from audit.models import AuditEvent
from catalog import services as catalog_services
from catalog.models import Environment
from tests.conftest import sign_in_with_second_factor
from tests.factories import request_change


def test_calendar_shows_windows_freezes_and_scheduled_changes(demo, client):
    production = Environment.objects.get(slug="production")
    Freeze.objects.create(environment=production, reason="Black Friday freeze",
                          starts_at=timezone.now() + timedelta(days=2),
                          ends_at=timezone.now() + timedelta(days=4))
    change = request_change(demo.engineer, "staging",
                            scheduled_for=timezone.now() + timedelta(days=1))
    client.force_login(demo.engineer)
    html = client.get("/calendar/").content.decode()
    assert "Tuesday 22:00-02:00 Europe/London" in html
    assert "Black Friday freeze" in html
    assert change.reference in html


def test_oncall_locks_and_unlocks_an_environment_on_its_page(demo, client):
    # Unlocking needs a fresh second factor (docs/identity.md).
    sign_in_with_second_factor(client, demo.oncall)
    response = client.post("/environments/", {"environment": "staging", "reason": "INC-9"},
                           follow=True)
    assert "Staging is locked." in response.content.decode()
    assert Environment.objects.get(slug="staging").lock_reason == "INC-9"
    client.post("/environments/", {"environment": "staging", "action": "unlock"})
    assert not Environment.objects.get(slug="staging").locked


def test_an_engineer_cannot_lock_and_sees_no_lock_button(demo, client):
    client.force_login(demo.engineer)
    page = client.get("/environments/").content.decode()
    assert "Lock</button>" not in page
    response = client.post("/environments/", {"environment": "staging", "reason": "x"},
                           follow=True)
    assert "you may not lock Staging" in response.content.decode()
    assert not Environment.objects.get(slug="staging").locked


def test_delegation_page_creates_and_revokes_with_field_errors(demo, client):
    client.force_login(demo.cab)
    bad = client.post("/delegations/", {"environment": "production", "role": "cab",
                                        "delegate": "cab2",
                                        "expires_at": "2020-01-01T10:00"})
    assert bad.status_code == 400
    assert "Choose a time in the future." in bad.content.decode()
    expires = (timezone.now() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    client.post("/delegations/", {"environment": "production", "role": "cab",
                                  "delegate": "security", "expires_at": expires})
    delegation = Delegation.objects.get()
    assert delegation.delegate == demo.security
    client.post("/delegations/", {"revoke": str(delegation.pk)})
    delegation.refresh_from_db()
    assert delegation.revoked_at is not None


def test_ticking_a_checklist_item_in_the_page_records_who_and_the_note(demo, client):
    change = request_change(demo.engineer, "production")
    item = change.checklist.get(text="Database migrations tested")
    client.force_login(demo.engineer)
    response = client.post(f"/changes/{change.pk}/checklist/{item.pk}",
                           {"done": "1", "note": "ran on staging copy"},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "ran on staging copy" in response.content.decode()
    item.refresh_from_db()
    assert item.done and item.done_by == demo.engineer


def test_editing_a_change_in_the_page_reopens_concerned_gates(demo, client):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    client.force_login(demo.engineer)
    response = client.post(f"/changes/{change.pk}/edit/", {
        "strategy": "canary", "risk": "", "impact": "", "rollback_plan": "", "on_call": "",
        "scheduled_for": ""}, follow=True)
    assert "Approvals whose concern changed were reopened" in response.content.decode()
    assert change.gates.get(role="tech_lead").status == "pending"


def test_withdrawing_from_the_change_page(demo, client):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    client.force_login(demo.techlead)
    page = client.get(f"/changes/{change.pk}/").content.decode()
    assert f"/changes/{change.pk}/gates/tech_lead/withdraw" in page
    client.post(f"/changes/{change.pk}/gates/tech_lead/withdraw", {"reason": "second look"})
    assert change.gates.get(role="tech_lead").status == "pending"
    assert AuditEvent.objects.filter(action="approval.withdrawn").exists()


def test_change_page_says_when_nobody_is_left_to_decide_a_gate(demo, client):
    from tests.factories import ReleaseFactory

    change = request_change(demo.engineer, "staging", release=ReleaseFactory(authors=["qa"]))
    client.force_login(demo.engineer)
    html = client.get(f"/changes/{change.pk}/").content.decode()
    assert "obody is left to decide the QA gate" in html


def test_change_page_query_count_does_not_grow_with_the_checklist(demo, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals.models import ChecklistItem

    change = request_change(demo.engineer, "production")
    client.force_login(demo.engineer)

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(f"/changes/{change.pk}/").status_code == 200
        return len(ctx.captured_queries)

    few = queries()
    ChecklistItem.objects.bulk_create(
        ChecklistItem(change=change, kind="code_readiness", position=50 + i, text=f"Extra {i}")
        for i in range(10))
    assert queries() == few


def test_scheduled_for_in_the_past_is_refused_next_to_the_field(demo, client):
    from tests.factories import ReleaseFactory

    client.force_login(demo.engineer)
    response = client.post("/changes/new/", {
        "release": ReleaseFactory().pk, "environment": "staging", "change_type": "standard",
        "strategy": "all_at_once",
        "scheduled_for": datetime(2020, 1, 1, tzinfo=UTC).strftime(
            "%Y-%m-%dT%H:%M")})
    assert response.status_code == 400
    assert "Choose a time in the future." in response.content.decode()
    assert not ChangeRequest.objects.exists()


def test_change_page_warns_cab_of_an_irreversible_migration_before_approval(demo, client):
    from tests.factories import ReleaseFactory

    release = ReleaseFactory(migration_plan=[
        {"name": "0007_add_orders_index", "kind": "expand"},
        {"name": "0008_drop_legacy_prices", "kind": "irreversible"}])
    change = request_change(demo.engineer, "production", release=release)
    client.force_login(demo.cab)
    html = client.get(f"/changes/{change.pk}/").content.decode()
    assert "0007_add_orders_index" in html
    assert ("cannot be rolled back automatically past 0008_drop_legacy_prices: it is "
            "irreversible") in html


def test_a_draft_is_submitted_by_its_requester_from_the_page_or_the_api(demo, client, api):
    draft = request_change(demo.engineer, "staging", draft=True)
    assert draft.gates.count() == 0
    other = api(demo.techlead).post(f"/api/v1/changes/{draft.pk}/submit")
    assert other.status_code == 403 and other.json()["code"] == "not_requester"
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{draft.pk}/").content.decode()
    assert "Submit for approval" in page
    assert "The gates come from Staging's policy when the draft is submitted." in page
    client.post(f"/changes/{draft.pk}/submit")
    draft.refresh_from_db()
    assert draft.status == "pending_approval" and draft.gates.count() == 2
    again = api(demo.engineer).post(f"/api/v1/changes/{draft.pk}/submit")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"


def test_refusals_on_the_control_pages_change_nothing(demo, client):
    from datetime import timedelta

    from django.utils import timezone

    change = request_change(demo.engineer, "staging")
    # Someone else may not edit the change.
    client.force_login(demo.techlead)
    response = client.post(f"/changes/{change.pk}/edit/", {
        "strategy": "canary", "risk": "", "impact": "", "rollback_plan": "", "on_call": "",
        "scheduled_for": ""})
    assert response.status_code == 400
    assert "only the requester edits a change" in response.content.decode()
    change.refresh_from_db()
    assert change.strategy == "all_at_once"
    # QA may not cancel it.
    client.force_login(demo.qa)
    client.post(f"/changes/{change.pk}/cancel", {"reason": "no"})
    change.refresh_from_db()
    assert change.status == "pending_approval"
    # Only the delegator revokes a delegation.
    delegation = services.delegation_create(
        actor=demo.cab, environment=Environment.objects.get(slug="production"), role="cab",
        delegate=demo.cab2, expires_at=timezone.now() + timedelta(days=1))
    client.force_login(demo.cab2)
    response = client.post("/delegations/", {"revoke": str(delegation.pk)}, follow=True)
    assert "only the delegator revokes a delegation" in response.content.decode()
    delegation.refresh_from_db()
    assert delegation.revoked_at is None
    # An engineer may not unlock an environment on-call locked.
    catalog_services.environment_lock(actor=demo.oncall, environment=Environment.objects.get(
        slug="staging"), reason="INC-3")
    client.force_login(demo.engineer)
    client.post("/environments/", {"environment": "staging", "action": "unlock"})
    assert Environment.objects.get(slug="staging").locked
    # Another person may not withdraw techlead's approval.
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    client.force_login(demo.qa)
    client.post(f"/changes/{change.pk}/gates/tech_lead/withdraw")
    assert change.gates.get(role="tech_lead").status == "approved"
