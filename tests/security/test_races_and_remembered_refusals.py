"""Only applied deliveries are remembered, and races are settled in the database.

- An Alertmanager alert refused for its sender (an engineer's token: engineers may not
  roll back Production) is audited and not remembered: the same alert sent later by
  on-call still rolls back.
- The stale sweep checks a run's staleness again under the row lock: a worker that
  claims the deployment between the sweep's read and its lock is never failed under
  its worker's feet, and the queue does not start the next deployment on its targets.
- Two pushes of one version at the same time make one change and one deployment.

Races run with real transactions and threads; the interleaving is forced with events,
never with sleeps.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import ChangeRequest
from audit.models import AuditEvent
from catalog.models import Environment
from core import dispatch
from deployments import services
from deployments.models import Deployment
from deployments.services import run as engine_run
from integrations.models import HookDelivery
from tests.api.helpers import finished_deployment
from tests.factories import ReleaseFactory
from tests.security.test_hooks_cannot_be_replayed import (  # noqa: F401  (fixture)
    deliver,
    hooks_signed,
    rollback_alert,
)

ALERTMANAGER = "/api/v1/hooks/alertmanager"
WAIT = 60  # seconds an event may take before the test fails (never reached when it works)


# --- 12. a refused alert is audited, not remembered ----------------------------------------


def _alert_from_token(client, body, delivery_id):
    answer = client.post(ALERTMANAGER, body, format="json", HTTP_WEBHOOK_ID=delivery_id)
    assert answer.status_code == 200, answer.content
    return answer.json()["results"][0]


def _rollbacks() -> int:
    return Deployment.objects.filter(kind="rollback").count()


@pytest.mark.parametrize("on_call", ["on-call's token", "the signed Alertmanager hook"])
def test_an_alert_refused_for_an_engineer_still_rolls_back_when_on_call_sends_it(
        demo, api, hooks_signed, on_call):  # noqa: F811
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    body = {"status": "firing", "alerts": [rollback_alert()]}

    # An engineer's token (engineers may not roll back Production) sends the alert.
    refused = _alert_from_token(api(demo.engineer), body, "am-delivery-1")
    assert refused["outcome"] == "refused" and refused["code"] == "not_permitted"
    assert _rollbacks() == 0
    assert Deployment.objects.get(pk=latest.pk).status == "succeeded"
    refusal = AuditEvent.objects.get(action="deployment.rollback.refused")
    assert refusal.actor_id == demo.engineer.pk and refusal.after["code"] == "not_permitted"
    # Audited, but neither the alert nor the delivery left a replay record.
    assert not HookDelivery.objects.exists()

    # The same alert from on-call (the same delivery id, for the token) rolls back.
    if on_call == "on-call's token":
        applied = _alert_from_token(api(demo.oncall), body, "am-delivery-1")
    else:
        applied = deliver("alertmanager", body).json()["results"][0]
    assert applied["outcome"] == "rolled_back", applied
    assert applied["deployment"] == latest.pk
    assert Deployment.objects.get(pk=latest.pk).status == "rolled_back"
    assert _rollbacks() == 1

    # Applied, it is remembered: the engineer's repeat changes nothing.
    again = _alert_from_token(api(demo.engineer), body, "am-delivery-2")
    assert again["outcome"] == "duplicate"
    assert _rollbacks() == 1
    assert AuditEvent.objects.filter(action="deployment.rolled_back").count() == 1


def test_an_alert_on_call_applied_is_a_duplicate_for_an_engineer_later(demo, api):
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    body = {"status": "firing", "alerts": [rollback_alert(fingerprint="77aa")]}
    applied = _alert_from_token(api(demo.oncall), body, "am-on-call")
    assert applied["outcome"] == "rolled_back" and applied["deployment"] == latest.pk
    later = _alert_from_token(api(demo.engineer), body, "am-engineer")
    assert later["outcome"] == "duplicate"
    assert _rollbacks() == 1
    assert not AuditEvent.objects.filter(action="deployment.rollback.refused").exists()


def test_an_alert_with_nothing_to_roll_back_is_not_remembered(demo, api):
    body = {"status": "firing", "alerts": [rollback_alert(fingerprint="88bb")]}
    first = _alert_from_token(api(demo.oncall), body, "am-early")
    assert first["outcome"] == "no_deployment"
    assert not HookDelivery.objects.exists()
    # The deployment the alert is about lands; Alertmanager's next notification acts.
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    second = _alert_from_token(api(demo.oncall), body, "am-later")
    assert second["outcome"] == "rolled_back" and second["deployment"] == latest.pk


# --- threads ------------------------------------------------------------------------------


def _in_thread(target, errors: list) -> threading.Thread:
    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def sent(settings):
    """Deployments handed to the workers, held instead of sent (no worker runs them):
    ``sent()`` lists their ids."""
    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()
    yield lambda: [h.args[0] for h in dispatch.held("deployments.tasks.deployment_execute")]
    dispatch.clear_held()


# --- 13. the stale sweep against a worker's claim -----------------------------------------


def _stale_running_with_one_waiting(demo):
    """A running deployment whose heartbeat is old (its worker died) on its last attempt
    but one, and a second deployment of the application waiting for its targets."""
    staging = Environment.objects.get(slug="staging")
    with transaction.atomic():
        running = services.deployment_create(actor=demo.oncall, release=ReleaseFactory(),
                                             environment=staging)
    Deployment.objects.filter(pk=running.pk).update(
        status="running", attempts=services.MAX_ATTEMPTS - 1,
        started_at=timezone.now() - timedelta(minutes=20),
        heartbeat_at=timezone.now() - timedelta(minutes=10))
    with transaction.atomic():
        waiting = services.deployment_create(actor=demo.oncall, release=ReleaseFactory(),
                                             environment=staging)
    assert not Deployment.objects.get(pk=waiting.pk).holds_target
    return running, waiting


@pytest.mark.django_db(transaction=True)
def test_a_worker_claiming_between_the_sweeps_read_and_lock_is_not_failed(
        demo, sent, monkeypatch):
    running, waiting = _stale_running_with_one_waiting(demo)
    swept_read = threading.Event()   # the sweep read the deployment as stale
    claimed = threading.Event()      # the worker claimed it and is in its step
    sweep_over = threading.Event()   # the sweep is done: the worker's step may end
    # The run module's seam: the sweep and the run look both up on it when they call.
    real_is_live, real_claim = engine_run.run_is_live, engine_run.claim_run
    asked: list[int] = []

    def is_live_then_let_the_worker_claim(pk):
        live = real_is_live(pk)
        if not asked:
            # Between the sweep's read (and this check) and its row lock, the worker
            # claims the deployment and starts its step.
            asked.append(pk)
            swept_read.set()
            assert claimed.wait(WAIT), "the worker did not claim the deployment"
        return live

    def claim_then_run_a_step(deployment_id):
        real_claim(deployment_id)
        claimed.set()
        # The step runs (the run lock held) until the sweep is over; then the run ends.
        assert sweep_over.wait(WAIT), "the sweep did not finish"
        return None

    monkeypatch.setattr(engine_run, "run_is_live", is_live_then_let_the_worker_claim)
    monkeypatch.setattr(engine_run, "claim_run", claim_then_run_a_step)
    errors: list = []
    handled: list[int] = []

    def worker():
        assert swept_read.wait(WAIT), "the sweep did not read the deployment"
        services.deployment_run(deployment_id=running.pk)

    def sweep():
        try:
            handled.append(services.deployments_resume_stale())
        finally:
            sweep_over.set()

    threads = [_in_thread(worker, errors), _in_thread(sweep, errors)]
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors, errors
    assert asked == [running.pk]

    claimed_run = Deployment.objects.get(pk=running.pk)
    assert claimed_run.status == "running", claimed_run.failure_reason
    assert claimed_run.attempts == services.MAX_ATTEMPTS
    assert handled == [0]
    assert not AuditEvent.objects.filter(
        object_id=str(running.pk), action__in=["deployment.failed", "deployment.requeued"]
    ).exists()
    # The queue did not move: the next deployment still waits for the targets.
    waiting.refresh_from_db()
    assert waiting.status == "queued" and not waiting.holds_target
    assert waiting.pk not in sent()


@pytest.mark.django_db(transaction=True)
def test_the_sweep_still_fails_a_stale_run_on_its_last_attempt_and_moves_the_queue(
        demo, sent):
    running, waiting = _stale_running_with_one_waiting(demo)
    Deployment.objects.filter(pk=running.pk).update(attempts=services.MAX_ATTEMPTS)
    assert services.deployments_resume_stale() == 1
    assert Deployment.objects.get(pk=running.pk).status == "failed"
    waiting.refresh_from_db()
    assert waiting.holds_target and waiting.pk in sent()


# --- 14. concurrent pushes of one version -------------------------------------------------


def _race(calls) -> list:
    barrier = threading.Barrier(len(calls))
    answers: list = []
    errors: list = []

    def runner(call):
        def run():
            barrier.wait(WAIT)
            answers.append(call())
        return run

    threads = [_in_thread(runner(call), errors) for call in calls]
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors, errors
    return answers


@pytest.mark.django_db(transaction=True)
def test_concurrent_pushes_of_one_version_make_one_change_and_one_deployment(
        demo, api, sent):
    for round_ in range(3):
        version = f"7.{round_}.0"
        clients = [api(demo.ci) for _ in range(4)]
        body = {"application": "storefront", "version": version, "ref": "refs/heads/main"}
        answers = _race([lambda c=client, b=body: c.post("/api/v1/hooks/push", b,
                                                         format="json")
                         for client in clients])
        assert sorted(a.status_code for a in answers) == [202] * 4, [
            a.content for a in answers]
        changes = ChangeRequest.objects.filter(release__version=version,
                                               environment__slug="development")
        assert changes.count() == 1
        change = changes.get()
        assert {a.json()["change"] for a in answers} == {change.pk}
        deployments = Deployment.objects.filter(change_id=change.pk)
        assert deployments.count() == 1
        assert {a.json()["deployment"] for a in answers} == {deployments.get().pk}
