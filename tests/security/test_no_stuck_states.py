"""No stuck states: a change never stays deploying after its deployment ended, a
cancel waits for the running step, one failing scheduled change never stops the others."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals import services as approval_services
from approvals import tasks as approval_tasks
from approvals.models import ChangeRequest
from approvals.services import closing
from audit.models import AuditEvent
from catalog.models import Environment
from deployments import services
from deployments.models import Deployment, DeploymentStep
from tests.conftest import wait_for
from tests.deployments.conftest import fleet  # noqa: F401  (the demo fleet fixture)
from tests.factories import ReleaseFactory, request_change

PEOPLE = ("techlead", "qa", "cab", "security", "business", "oncall")


def approve_all(change, demo):
    people = dict(zip(("tech_lead", "qa", "cab", "security", "business", "emergency"),
                      (getattr(demo, name) for name in PEOPLE), strict=True))
    for gate in change.gates.all():
        approval_services.gate_approve(actor=people[gate.role], change=change, role=gate.role)
    change.refresh_from_db()
    return change


def green_release(**kw):
    return ReleaseFactory(checks={"tests": {"status": "passed"},
                                  "security_scan": {"status": "passed", "critical": 0}}, **kw)


def deploying_change(demo, environment="staging", release=None):
    change = approve_all(request_change(demo.engineer, environment,
                                        release=release or green_release()), demo)
    deployment = approval_services.change_request_deploy(actor=demo.oncall, change=change)
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    return change, deployment


# --- a change closes with its deployment, and the beat heals what a failure left -----


def test_the_change_closes_in_the_transaction_that_ends_its_deployment(
        demo, django_capture_on_commit_callbacks):
    change, deployment = deploying_change(demo)
    services.deployment_cancel(actor=demo.oncall, deployment=deployment, reason="window")
    # Before anything after commit has run, the change is already settled.
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED


def test_a_failing_listener_leaves_the_change_deploying_and_the_beat_closes_it(
        demo, monkeypatch, django_capture_on_commit_callbacks):
    change, deployment = deploying_change(demo)

    def broken(**kwargs):
        raise RuntimeError("listener broke")

    monkeypatch.setattr(closing, "change_request_deployment_finished", broken)
    with django_capture_on_commit_callbacks(execute=True):
        services.deployment_cancel(actor=demo.oncall, deployment=deployment, reason="window")
    deployment.refresh_from_db()
    change.refresh_from_db()
    # The deployment's end was not undone by its listener's failure...
    assert deployment.status == Deployment.Status.CANCELLED
    assert AuditEvent.objects.filter(action="deployment.cancelled",
                                     object_id=str(deployment.pk)).exists()
    # ...and the change is left deploying, which no deploy press can get past.
    assert change.status == ChangeRequest.Status.DEPLOYING

    # The beat task still fails while the listener is broken, and harms nothing.
    approval_tasks.changes_close_finished()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING

    monkeypatch.undo()
    approval_tasks.changes_close_finished()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert AuditEvent.objects.filter(action="change.reopened",
                                     object_id=str(change.pk)).exists()
    # A second beat finds nothing to do.
    assert approval_services.changes_close_finished() == []


def test_the_beat_closes_a_change_whose_deployment_failed_and_leaves_running_ones(
        demo, monkeypatch):
    change, deployment = deploying_change(demo)
    busy, busy_deployment = deploying_change(demo, "development")
    # The deployment failed while the closing listener was broken.
    monkeypatch.setattr(closing, "change_request_deployment_finished", lambda **kw: 1 / 0)
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        services.deployment_finish(deployment=locked, status=Deployment.Status.FAILED,
                                   reason="target unreachable")
    monkeypatch.undo()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING

    assert approval_services.changes_close_finished() == [change.pk]
    change.refresh_from_db()
    busy.refresh_from_db()
    assert change.status == ChangeRequest.Status.FAILED and change.closed_at
    assert busy.status == ChangeRequest.Status.DEPLOYING  # its deployment is still queued


def test_the_closing_task_is_on_the_beat_schedule():
    from portal.celery import app

    entries = {e["task"] for e in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert "approvals.tasks.changes_close_finished" in entries
    app.loader.import_default_modules()
    assert "approvals.tasks.changes_close_finished" in app.tasks


# --- cancel waits for the running step ---------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_cancel_during_a_step_stops_after_it_and_queues_other_deployments_meanwhile(
        fleet, celery_worker_process, api):  # noqa: F811
    shop = fleet(targets=1, environment="staging", step_delay=3)
    change = approve_all(request_change(shop.demo.engineer, "staging",
                                        release=green_release(application=shop.app)),
                         shop.demo)
    deployment = shop.start("1.0.0")
    wait_for(lambda: DeploymentStep.objects.filter(deployment=deployment,
                                                   status="running").exists(), timeout=60)

    response = api(shop.demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/cancel",
                                          {"reason": "wrong window"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "stopping"
    running = DeploymentStep.objects.get(deployment=deployment, status="running")

    # A second cancel is refused: it is already stopping.
    response = api(shop.demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/cancel",
                                          {}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "already_stopping"

    # While it stops, its targets are still taken: a second deployment, by any route,
    # waits in the queue behind it and does not start.
    queued = shop.start("1.0.1")
    assert queued.status == "queued" and not queued.holds_target
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(application=shop.app, environment=shop.environment,
                                  release=deployment.release, status="queued")
    response = api(shop.demo.oncall).post(f"/api/v1/changes/{change.pk}/deploy")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["queued"] is True and response["Location"].endswith(
        f"/deployments/{body['deployment']}/")
    # Behind the stopping one and the first queued (or only the latter, once the step ended).
    assert (body["waiting_for"], body["queue_position"]) in ((deployment.pk, 2),
                                                             (queued.pk, 1))
    # Cancelling a queued one takes it out of the queue; it never ran.
    response = api(shop.demo.oncall).post(f"/api/v1/deployments/{body['deployment']}/cancel",
                                          {"reason": "not now"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert not DeploymentStep.objects.filter(deployment_id=body["deployment"]).exclude(
        status="pending").exists()

    deployment = shop.wait(deployment)
    assert deployment.status == "cancelled"
    running.refresh_from_db()
    assert running.status == "succeeded"  # the step in progress was finished, not cut
    assert deployment.steps.filter(status="pending").exists()  # nothing after it ran
    actions = list(AuditEvent.objects.filter(object_type="deployment",
                                             object_id=str(deployment.pk)).order_by("id")
                   .values_list("action", flat=True))
    assert actions.index("deployment.stopping") < actions.index("deployment.cancelled")
    # Once cancelled, the target is free again: the queued deployment starts.
    assert shop.wait(queued).status == "succeeded"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_rollback_during_a_step_starts_only_after_that_step_ends(
        fleet, celery_worker_process, api):  # noqa: F811
    import threading

    shop = fleet(targets=1, environment="staging", step_delay=3)
    assert shop.deploy("1.0.0").status == "succeeded"
    deployment = shop.start("1.1.0")
    wait_for(lambda: DeploymentStep.objects.filter(deployment=deployment,
                                                   status="running").exists(), timeout=60)
    running = DeploymentStep.objects.get(deployment=deployment, status="running")

    response = api(shop.demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/rollback",
                                          {"reason": "errors are up"}, format="json")
    assert response.status_code == 202, response.content
    rollback = Deployment.objects.get(rolled_back_deployment=deployment)
    # A second worker picks the rollback up at once (here: a thread of this process).
    def second_worker():
        from django.db import connection

        try:
            services.deployment_run(deployment_id=rollback.pk)
        finally:
            connection.close()

    second = threading.Thread(target=second_worker)
    second.start()
    rollback = shop.wait(rollback)
    second.join(timeout=60)

    assert rollback.status == "succeeded"
    running.refresh_from_db()
    first = rollback.steps.order_by("started_at").first()
    assert first.started_at >= running.finished_at, (
        "the rollback acted on the target while the interrupted step still ran")
    assert rollback.log_lines.filter(message__startswith="Waiting for the running step").exists()
    assert shop.served_versions() == {"web-1": "1.0.0"}


def test_a_deployment_stopping_when_its_worker_died_is_cancelled_by_the_beat(demo):
    release = green_release()
    with transaction.atomic():
        deployment = services.deployment_create(
            actor=demo.oncall, release=release, environment=Environment.objects.get(
                slug="staging"))
    Deployment.objects.filter(pk=deployment.pk).update(
        status="stopping", attempts=1, failure_reason="wrong window",
        heartbeat_at=timezone.now() - timedelta(minutes=10))

    assert services.deployments_resume_stale() == 1
    deployment.refresh_from_db()
    assert deployment.status == "cancelled" and deployment.failure_reason == "wrong window"


# --- scheduled changes -------------------------------------------------------------------


def test_one_failing_scheduled_change_does_not_stop_the_others(demo, monkeypatch):
    when = timezone.now() + timedelta(hours=1)
    first = approve_all(request_change(demo.engineer, "development", release=green_release(),
                                       scheduled_for=when), demo)
    stale = approve_all(request_change(demo.engineer, "staging", release=green_release(),
                                       scheduled_for=when), demo)
    broken = approve_all(request_change(demo.engineer, "staging",
                                        release=green_release(application=_other_app("api")),
                                        scheduled_for=when), demo)
    last = approve_all(request_change(demo.engineer, "staging",
                                      release=green_release(application=_other_app()),
                                      scheduled_for=when), demo)
    for change in (first, stale, broken, last):
        assert change.status == ChangeRequest.Status.SCHEDULED
    # Its strategy changed behind the approvals' back: starting it is refused.
    ChangeRequest.objects.filter(pk=stale.pk).update(strategy="blue_green")
    # And one whose start fails in a way nobody foresaw.
    create = services.deployment_create

    def failing_create(**kwargs):
        if kwargs["release"].application.slug == "api":
            raise RuntimeError("executor settings unreadable")
        return create(**kwargs)

    monkeypatch.setattr(services, "deployment_create", failing_create)

    started = approval_services.changes_start_scheduled(now=when + timedelta(seconds=1))

    assert len(started) == 2
    for change in (first, stale, broken, last):
        change.refresh_from_db()
    assert first.status == last.status == ChangeRequest.Status.DEPLOYING
    # Neither starts later by surprise: both wait, approved, for someone to deploy them.
    assert stale.status == broken.status == ChangeRequest.Status.APPROVED
    assert not Deployment.objects.filter(change_id__in=[stale.pk, broken.pk]).exists()
    deferred = AuditEvent.objects.get(action="change.start_deferred")
    assert deferred.object_id == str(stale.pk) and deferred.after["code"] == "not_ready"
    assert any("strategy" in b["message"] for b in deferred.after["blockers"])
    failed = AuditEvent.objects.get(action="change.schedule_failed")
    assert failed.object_id == str(broken.pk)
    assert failed.after["code"] == "error"


def _other_app(slug="billing"):
    from catalog.models import Application

    return Application.objects.create(slug=slug, name=slug.title())
