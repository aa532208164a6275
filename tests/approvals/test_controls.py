"""SOP controls: authorship, delegation, withdrawal, fingerprints, checklists, promotion,
windows, freezes, locks, schedules, emergency reviews."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from approvals import selectors, services
from approvals.models import (
    ChangeRequest,
    ChecklistKind,
    Freeze,
    Gate,
    MaintenanceWindow,
    PostImplementationReview,
)
from audit.models import AuditEvent
from catalog import services as catalog_services
from catalog.models import Environment
from core.errors import Invalid, InvalidTransition, NotEligible, NotReady, Refused
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

UTC = UTC


def env(slug):
    return Environment.objects.get(slug=slug)


def codes(change, at=None):
    change = selectors.change_detail_queryset().get(pk=change.pk)
    return [b.code for b in selectors.change_blockers(change, at=at)]


def approve_all(change, demo):
    people = {"tech_lead": demo.techlead, "qa": demo.qa, "cab": demo.cab,
              "security": demo.security, "business": demo.business,
              "emergency": demo.oncall}
    for gate in change.gates.all():
        services.gate_approve(actor=people[gate.role], change=change, role=gate.role)
    change.refresh_from_db()
    return change


def succeed_in(environment_slug, release, demo):
    d = Deployment.objects.create(application=release.application, release=release,
                                  environment=env(environment_slug), status="succeeded",
                                  started_by=demo.engineer)
    return d


def green_release(**kw):
    return ReleaseFactory(checks={"tests": {"status": "passed"},
                                  "security_scan": {"status": "passed", "critical": 0}}, **kw)


# Segregation of duties by authorship -------------------------------------------------------

def test_commit_authors_and_mergers_cannot_approve_the_change_that_ships_them(demo):
    release = green_release(authors=["qa"], mergers=["techlead"])
    change = request_change(demo.engineer, "staging", release=release)
    with pytest.raises(NotEligible) as author:
        services.gate_approve(actor=demo.qa, change=change, role="qa")
    assert author.value.code == "author"
    with pytest.raises(NotEligible) as merger:
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    assert merger.value.code == "merger"
    assert AuditEvent.objects.filter(action="gate.approved.refused").count() == 2


def test_a_gate_nobody_may_decide_is_reported_at_request_time(demo):
    release = green_release(authors=["qa"])  # the only QA person wrote the code
    change = request_change(demo.engineer, "staging", release=release)
    change = selectors.change_detail_queryset().get(pk=change.pk)
    blockers = selectors.unsatisfiable_gates(change)
    assert [b.code for b in blockers] == ["gate_unsatisfiable"]
    assert "QA" in blockers[0].message
    submitted = AuditEvent.objects.get(action="change.submitted", object_id=str(change.pk))
    assert submitted.after["unsatisfiable"]


def test_overlapping_groups_never_let_one_person_fill_two_gates(demo):
    # techlead also joins QA: with qa as the requester, only techlead is left for both gates.
    from django.contrib.auth.models import Group

    demo.techlead.groups.add(Group.objects.get(name="qa"))
    demo.qa.groups.add(Group.objects.get(name="engineers"))
    change = request_change(demo.qa, "staging")
    change = selectors.change_detail_queryset().get(pk=change.pk)
    assert [b.code for b in selectors.unsatisfiable_gates(change)] == ["gate_unsatisfiable"]
    # A second QA person makes both gates satisfiable again.
    demo.cab.groups.add(Group.objects.get(name="qa"))
    assert selectors.unsatisfiable_gates(change) == []


# Delegation -------------------------------------------------------------------------------

def test_delegated_gate_can_be_decided_until_it_expires(demo):
    change = request_change(demo.engineer, "production")
    with pytest.raises(NotEligible):
        services.gate_approve(actor=demo.cab2, change=change, role="security")
    delegation = services.delegation_create(
        actor=demo.security, environment=env("production"), role="security",
        delegate=demo.cab2, expires_at=timezone.now() + timedelta(days=2), reason="holiday")
    services.gate_approve(actor=demo.cab2, change=change, role="security", comment="ok")
    approval = change.approvals.get(approver=demo.cab2)
    assert approval.on_behalf_of == demo.security
    assert AuditEvent.objects.filter(action="delegation.created").exists()

    other = request_change(demo.engineer, "production")
    delegation.expires_at = timezone.now() - timedelta(seconds=1)
    delegation.save()
    with pytest.raises(NotEligible):
        services.gate_approve(actor=demo.cab2, change=other, role="security")


def test_only_holders_delegate_and_not_for_long(demo):
    with pytest.raises(NotEligible):
        services.delegation_create(actor=demo.qa, environment=env("production"), role="cab",
                                   delegate=demo.cab2,
                                   expires_at=timezone.now() + timedelta(days=1))
    with pytest.raises(Invalid):
        services.delegation_create(actor=demo.cab, environment=env("production"), role="cab",
                                   delegate=demo.cab2,
                                   expires_at=timezone.now() + timedelta(days=60))


# Withdrawal and fingerprints --------------------------------------------------------------

def test_an_approval_can_be_withdrawn_until_deployment_starts(demo):
    change = approve_all(request_change(demo.engineer, "staging", release=green_release()), demo)
    assert change.status == ChangeRequest.Status.APPROVED
    services.approval_withdraw(actor=demo.qa, change=change, role="qa", reason="found a bug")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert change.gates.get(role="qa").status == Gate.Status.PENDING
    assert AuditEvent.objects.filter(action="approval.withdrawn").exists()
    # qa may decide again after withdrawing.
    services.gate_approve(actor=demo.qa, change=change, role="qa", comment="fixed")
    services.change_request_deploy(actor=demo.engineer, change=change)
    with pytest.raises(InvalidTransition) as exc:
        services.approval_withdraw(actor=demo.qa, change=change, role="qa")
    assert exc.value.code == "too_late"


def test_editing_the_rollback_plan_reopens_only_the_gates_it_concerns(demo):
    release = green_release()
    succeed_in("staging", release, demo)
    change = request_change(demo.engineer, "production", release=release,
                            rollback_plan="Redeploy 1.0", on_call=demo.oncall)
    change = approve_all(change, demo)
    assert change.status == ChangeRequest.Status.APPROVED
    services.change_request_update(actor=demo.engineer, change=change,
                                   rollback_plan="Restore snapshot and redeploy 1.0")
    change.refresh_from_db()
    statuses = {g.role: g.status for g in change.gates.all()}
    assert statuses == {"cab": "pending", "security": "approved", "business": "approved"}
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    invalidated = AuditEvent.objects.get(action="approval.invalidated")
    assert invalidated.after == {"role": "cab", "approver": "cab",
                                 "changed": ["rollback_plan"]}


def test_editing_the_strategy_reopens_tech_lead_and_qa_in_staging(demo):
    change = approve_all(request_change(demo.engineer, "staging", release=green_release()), demo)
    services.change_request_update(actor=demo.engineer, change=change, strategy="canary")
    change.refresh_from_db()
    assert {g.role: g.status for g in change.gates.all()} == {"tech_lead": "pending",
                                                              "qa": "pending"}


def test_only_the_requester_edits(demo):
    change = request_change(demo.engineer, "staging")
    with pytest.raises(Refused):
        services.change_request_update(actor=demo.qa, change=change, strategy="canary")


# Checklists -------------------------------------------------------------------------------

def test_production_standard_change_gets_sop_readiness_checklists(demo):
    change = request_change(demo.engineer, "production")
    kinds = {i.kind for i in change.checklist.all()}
    assert kinds == {ChecklistKind.CODE_READINESS, ChecklistKind.INFRA_READINESS,
                     ChecklistKind.APPROVAL}
    texts = [i.text for i in change.checklist.filter(kind=ChecklistKind.CODE_READINESS)]
    assert texts[0] == "All code reviewed and approved"
    assert len(texts) == 6


def test_automatic_items_follow_the_data_and_manual_items_need_a_tick(demo):
    release = ReleaseFactory(checks={"tests": {"status": "failed"}})
    change = approve_all(request_change(demo.engineer, "staging", release=release), demo)
    blockers = codes(change)
    assert blockers == ["checklist"]
    item = change.checklist.get()
    with pytest.raises(InvalidTransition):
        services.checklist_item_set(actor=demo.engineer, change=change, item_id=item.pk,
                                    done=True)
    release.checks = {"tests": {"status": "passed"}}
    release.save()
    assert codes(change) == []


def test_manual_item_ticked_with_a_note_is_audited(demo):
    change = request_change(demo.engineer, "production")
    item = change.checklist.get(text="Performance testing completed")
    services.checklist_item_set(actor=demo.engineer, change=change, item_id=item.pk, done=True,
                                note="Load test run 2026-11-20")
    item.refresh_from_db()
    assert item.done and item.done_by == demo.engineer
    event = AuditEvent.objects.get(action="checklist.ticked")
    assert event.after["note"] == "Load test run 2026-11-20"
    with pytest.raises(Refused):
        services.checklist_item_set(actor=demo.outsider, change=change, item_id=item.pk,
                                    done=False)


# Promotion, windows, freezes, locks -------------------------------------------------------

def ready_production_change(demo, change_type="standard", **kw):
    release = green_release()
    succeed_in("staging", release, demo)
    change = request_change(demo.engineer, "production", release=release,
                            change_type=change_type, on_call=demo.oncall,
                            rollback_plan="Redeploy previous", **kw)
    for item in change.checklist.filter(auto_check=""):
        services.checklist_item_set(actor=demo.engineer, change=change, item_id=item.pk,
                                    done=True, note="done")
    return approve_all(change, demo)


TUESDAY_23 = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)  # inside Tue 22:00-02:00 London
WEDNESDAY_12 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_standard_production_change_needs_staging_success_first(demo):
    change = request_change(demo.engineer, "production", release=green_release())
    assert "promotion" in codes(change, at=TUESDAY_23)


def test_standard_production_change_waits_for_the_maintenance_window(demo):
    change = ready_production_change(demo)
    assert codes(change, at=TUESDAY_23) == []
    assert codes(change, at=WEDNESDAY_12) == ["outside_window"]
    change = selectors.change_detail_queryset().get(pk=change.pk)
    earliest = selectors.earliest_deploy_time(change, at=WEDNESDAY_12)
    assert earliest == datetime(2026, 12, 3, 22, 0, tzinfo=UTC)  # Thursday 22:00 London


def test_hotfix_may_run_outside_windows(demo):
    change = ready_production_change(demo, change_type="hotfix")
    assert codes(change, at=WEDNESDAY_12) == []


def test_only_emergency_passes_a_freeze(demo):
    Freeze.objects.create(environment=env("production"), reason="Year-end freeze",
                          starts_at=datetime(2026, 12, 1, tzinfo=UTC),
                          ends_at=datetime(2026, 12, 5, tzinfo=UTC))
    hotfix = ready_production_change(demo, change_type="hotfix")
    assert codes(hotfix, at=WEDNESDAY_12) == ["freeze"]
    emergency = ready_production_change(demo, change_type="emergency")
    assert codes(emergency, at=WEDNESDAY_12) == []
    hotfix = selectors.change_detail_queryset().get(pk=hotfix.pk)
    assert selectors.earliest_deploy_time(hotfix, at=WEDNESDAY_12) == datetime(
        2026, 12, 5, tzinfo=UTC)


def test_yearly_freeze_recurs(demo):
    Freeze.objects.create(environment=env("production"), reason="Holidays", recurs_yearly=True,
                          starts_at=datetime(2020, 12, 24, tzinfo=UTC),
                          ends_at=datetime(2020, 12, 27, tzinfo=UTC))
    hotfix = ready_production_change(demo, change_type="hotfix")
    assert codes(hotfix, at=datetime(2026, 12, 25, 10, tzinfo=UTC)) == ["freeze"]
    assert codes(hotfix, at=datetime(2026, 12, 28, 10, tzinfo=UTC)) == []


def test_oncall_locks_the_environment_and_nothing_deploys_until_unlocked(demo):
    change = ready_production_change(demo, change_type="emergency")
    with pytest.raises(Refused):
        catalog_services.environment_lock(actor=demo.engineer, environment=env("production"),
                                          reason="INC-7")
    with pytest.raises(Invalid):
        catalog_services.environment_lock(actor=demo.oncall, environment=env("production"),
                                          reason="")
    catalog_services.environment_lock(actor=demo.oncall, environment=env("production"),
                                      reason="INC-7 database failover")
    assert codes(change) == ["environment_locked"]
    with pytest.raises(NotReady):
        services.change_request_deploy(actor=demo.oncall, change=change)
    catalog_services.environment_unlock(actor=demo.oncall, environment=env("production"))
    assert codes(change) == []
    assert list(AuditEvent.objects.filter(object_type="environment").values_list(
        "action", flat=True).order_by("id")) == ["environment.locked", "environment.unlocked"]


def test_preflight_lists_every_blocker_and_the_earliest_time(demo):
    release = green_release()
    result = selectors.preflight(release=release, environment=env("production"),
                                 change_type="standard", at=WEDNESDAY_12)
    found = [b["code"] for b in result["blockers"]]
    assert found[:3] == ["gate_cab", "gate_security", "gate_business"]
    assert {"on_call_missing", "rollback_plan_missing", "checklist", "outside_window",
            "promotion"} <= set(found)
    assert result["earliest"] == datetime(2026, 12, 3, 22, 0, tzinfo=UTC)
    assert result["ready"] is False
    dev = selectors.preflight(release=release, environment=env("development"),
                              change_type="standard", at=WEDNESDAY_12)
    assert dev == {"ready": True, "blockers": [], "earliest": WEDNESDAY_12,
                   "at": WEDNESDAY_12}


# Schedules and emergencies ----------------------------------------------------------------

def test_scheduled_change_starts_at_its_time_only_if_still_ready(demo):
    when = timezone.now() + timedelta(hours=1)
    change = approve_all(request_change(demo.engineer, "staging", release=green_release(),
                                        scheduled_for=when), demo)
    assert change.status == ChangeRequest.Status.SCHEDULED
    assert services.changes_start_scheduled(now=when - timedelta(minutes=1)) == []
    started = services.changes_start_scheduled(now=when + timedelta(seconds=1))
    assert len(started) == 1
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING

    locked_change = approve_all(request_change(demo.engineer, "development",
                                               release=green_release(), scheduled_for=when),
                                demo)
    catalog_services.environment_lock(actor=demo.oncall, environment=env("development"),
                                      reason="INC")
    assert services.changes_start_scheduled(now=when + timedelta(seconds=1)) == []
    locked_change.refresh_from_db()
    assert locked_change.status == ChangeRequest.Status.APPROVED
    missed = AuditEvent.objects.get(action="change.schedule_missed")
    assert missed.after["blockers"][0]["code"] == "environment_locked"


def test_emergency_change_needs_a_rollback_plan(demo):
    with pytest.raises(Invalid) as exc:
        request_change(demo.engineer, "production", change_type="emergency")
    assert "rollback_plan" in exc.value.fields
    assert not ChangeRequest.objects.exists()


def test_emergency_change_opens_a_review_for_cab_after_deployment(demo):
    change = ready_production_change(demo, change_type="emergency")
    deployment = services.change_request_deploy(actor=demo.oncall, change=change)
    Deployment.objects.filter(pk=deployment.pk).update(status="succeeded")
    deployment.refresh_from_db()
    services.change_request_deployment_finished(deployment=deployment, status="succeeded")
    review = PostImplementationReview.objects.get(change=change)
    assert list(selectors.open_reviews(demo.cab)) == [review]
    assert list(selectors.open_reviews(demo.qa)) == []
    with pytest.raises(NotEligible):
        services.review_close(actor=demo.qa, review=review, findings="fine")
    services.review_close(actor=demo.cab, review=review, findings="Root cause fixed")
    assert list(selectors.open_reviews(demo.cab)) == []
    compliance = change.checklist.filter(kind=ChecklistKind.COMPLIANCE)
    assert compliance.count() == 7


def test_rolled_back_deployment_opens_the_rollback_verification_checklist(demo):
    change = approve_all(request_change(demo.engineer, "staging", release=green_release()), demo)
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)
    Deployment.objects.filter(pk=deployment.pk).update(status="rolled_back")
    services.change_request_deployment_finished(deployment=deployment, status="rolled_back")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.ROLLED_BACK
    items = change.checklist.filter(kind=ChecklistKind.ROLLBACK_VERIFICATION)
    assert [i.text for i in items][:2] == ["Application starts successfully",
                                           "Health checks pass"]
    opened = items.count()

    # The rollback that undid it finishing is the same event: the list is not opened again.
    from deployments import services as engine
    from deployments.models import Release

    previous = Release.objects.create(application=deployment.application, version="0.9.0",
                                      created_by=demo.engineer)
    rollback = engine.deployment_create(actor=demo.oncall, release=previous,
                                        environment=deployment.environment,
                                        change_id=change.pk, kind="rollback",
                                        rolled_back_deployment=deployment)
    Deployment.objects.filter(pk=rollback.pk).update(status="succeeded")
    services.change_request_deployment_finished(deployment=rollback, status="succeeded")
    assert change.checklist.filter(kind=ChecklistKind.ROLLBACK_VERIFICATION).count() == opened


def test_window_in_a_time_zone_spanning_midnight(demo):
    from approvals import schedule

    window = MaintenanceWindow(environment=env("production"), weekday=4,
                               start_time=time(23, 0), end_time=time(1, 0),
                               timezone="America/New_York")
    friday_late = datetime(2026, 11, 28, 4, 30, tzinfo=UTC)  # Fri 23:30 New York
    assert schedule.current_window([window], friday_late)
    assert not schedule.current_window([window], friday_late + timedelta(hours=2))


def test_preflight_of_an_existing_change_turns_ready_as_gates_are_approved(demo, api):
    change = request_change(demo.engineer, "staging", release=green_release())
    client = api(demo.engineer)
    first = client.get(f"/api/v1/preflight/?change={change.pk}").json()
    assert first["ready"] is False
    assert [b["code"] for b in first["blockers"]] == ["gate_tech_lead", "gate_qa"]
    approve_all(change, demo)
    after = client.get(f"/api/v1/preflight/?change={change.pk}").json()
    assert after["ready"] is True and after["blockers"] == []
    assert after["earliest"] is not None
    assert api(demo.outsider).get(f"/api/v1/preflight/?change={change.pk}").status_code == 404
    missing = client.get("/api/v1/preflight/?release=1")
    assert missing.status_code == 400 and "environment" in missing.json()["fields"]


def test_configuration_changes_after_approval_reopen_only_the_gates_concerned(
        demo, django_capture_on_commit_callbacks):
    from catalog.models import Application
    from configuration.services import configuration_save

    app = Application.objects.get(slug="storefront")

    def save(document, environment):
        with django_capture_on_commit_callbacks(execute=True):
            configuration_save(actor=demo.engineer, application=app,
                               environment=env(environment), document=document,
                               reason="tune")

    save("app:\n  workers: 4\n", "staging")
    staging = approve_all(request_change(demo.engineer, "staging", release=green_release()),
                          demo)
    save("app:\n  workers: 8\n", "staging")
    assert {g.role: g.status for g in staging.gates.all()} == {"tech_lead": "pending",
                                                               "qa": "approved"}

    save("database:\n  password: ${env:PRODUCTION_STOREFRONT_DB_PASSWORD}\n", "production")
    release = green_release()
    succeed_in("staging", release, demo)
    production = approve_all(request_change(demo.engineer, "production", release=release,
                                            on_call=demo.oncall, rollback_plan="Redeploy"),
                             demo)
    save("database:\n  password: vault:secret/production/storefront/db#password\n", "production")
    # A new secret reference goes back to security, not to everyone.
    assert {g.role: g.status for g in production.gates.all()} == {
        "cab": "approved", "security": "pending", "business": "approved"}
    event = AuditEvent.objects.filter(action="approval.invalidated").order_by("id").last()
    assert event.after["changed"] == ["secret_references"]


def test_each_state_blocker_says_what_it_is(demo):
    draft = request_change(demo.engineer, "development", draft=True)
    assert codes(draft) == ["draft"]

    closed = request_change(demo.engineer, "staging")
    services.change_request_cancel(actor=demo.engineer, change=closed)
    assert codes(closed) == ["change_closed"]

    first = request_change(demo.engineer, "development")
    services.change_request_deploy(actor=demo.engineer, change=first)
    assert codes(first) == ["deploying"]
    # Another deployment running there blocks nothing: the second one queues behind it.
    second = request_change(demo.engineer, "development")
    assert codes(second) == []
    queued = services.change_request_deploy(actor=demo.engineer, change=second)
    assert queued.status == "queued" and not queued.holds_target

    bare = request_change(demo.engineer, "production", change_type="hotfix",
                          release=green_release())
    assert {"on_call_missing", "rollback_plan_missing"} <= set(codes(bare))


def test_deploy_refuses_approvals_given_before_a_change_they_did_not_see(demo):
    from approvals.models import Approval

    change = approve_all(request_change(demo.engineer, "staging", release=green_release()),
                         demo)
    # As if the configuration had changed and its reopen had not run yet.
    approval = Approval.objects.get(change=change, gate__role="tech_lead")
    approval.fingerprint["configuration"] = "an earlier configuration"
    approval.save()
    with pytest.raises(NotReady) as exc:
        services.change_request_deploy(actor=demo.engineer, change=change)
    assert [b["code"] for b in exc.value.blockers] == ["approval_outdated"]
    assert exc.value.blockers[0]["message"] == (
        "the Tech lead approval was given before the configuration changed; it has to be "
        "given again")


def test_preflight_is_only_for_environments_one_works_in(demo, api):
    release = green_release()
    url = f"/api/v1/preflight/?release={release.pk}&environment=production"
    assert api(demo.outsider).get(url).status_code == 404
    assert api(demo.cab).get(url).status_code == 200
    assert api(demo.auditor).get(url).status_code == 200
