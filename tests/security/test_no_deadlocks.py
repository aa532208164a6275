"""The audit chain never deadlocks a request (docs/security.md section 17).

Real PostgreSQL, real threads, a real Celery worker. A deadlock is counted where
PostgreSQL reports it, in its own log ("deadlock detected"), so a deadlock that the
retry of ``core.transient`` would hide from the client is still seen here.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connection, transaction
from rest_framework.test import APIClient

from approvals.models import ChangeRequest
from audit.trail import audit_record, verify_chain
from deployments.models import Deployment
from tests.conftest import wait_for, waiting_for_a_lock
from tests.factories import ReleaseFactory

pytestmark = pytest.mark.django_db(transaction=True)

# How long the mixed workload runs (seconds); bounded, the loop stops at the deadline.
SOAK_SECONDS = float(os.environ.get("PORTAL_DEADLOCK_SOAK_SECONDS", "50"))
# The answers ordinary use may get besides success: refusals and conflicts with a code.
EXPECTED_REFUSALS = {400, 403, 404, 409}


def deadlocks_logged() -> int:
    """How many deadlocks the test server has reported in its log so far."""
    log = Path(os.environ["PORTAL_VAR_DIR"]) / "log" / "postgres.log"
    if not log.exists():
        return 0
    return sum(line.endswith("ERROR:  deadlock detected")
               for line in log.read_text(errors="replace").splitlines())


def token_client(user) -> APIClient:
    from audit.trail import System
    from identity.services import api_token_issue

    _, raw = api_token_issue(actor=System("test"), user=user,
                             name=f"deadlock-{user.pk}-{random.getrandbits(32)}")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def approved_staging_change(demo):
    from approvals import services
    from tests.factories import request_change

    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    return change


def test_a_deploy_holding_the_change_while_another_writer_audited_first_does_not_deadlock(
        demo):
    """The path that answered 503 ``database_unavailable``: a transaction writes an audit
    event (the chain's lock used to be taken there, and held to its commit) and then
    needs the change's row, while ``POST /changes/{id}/deploy`` holds that row and writes
    its own events. With the chain locked mid-transaction each waited for the other.
    Sealed at commit, the deploy goes through, the other writer then gets the row, and
    PostgreSQL reports no deadlock."""
    change = approved_staging_change(demo)
    client = token_client(demo.engineer)
    oncall = demo.oncall
    recorded, deployed = threading.Event(), threading.Event()
    answers, errors = [], []
    before = deadlocks_logged()

    def another_writer():
        try:
            with transaction.atomic():
                audit_record(actor=oncall, action="change.viewed", obj=change,
                             environment="staging")
                recorded.set()
                # Until the deploy holds the change and waits (the old chain order) or
                # has finished (sealed at commit, it waits for nothing of ours).
                wait_for(lambda: deployed.is_set() or waiting_for_a_lock(),
                         timeout=30, interval=0.02)
                ChangeRequest.objects.select_for_update().get(pk=change.pk)
        except Exception as exc:  # noqa: BLE001 - a deadlock victim lands here
            errors.append(exc)
        finally:
            connection.close()

    def deploy():
        try:
            recorded.wait(30)
            answers.append(client.post(f"/api/v1/changes/{change.pk}/deploy", format="json"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            deployed.set()
            connection.close()

    threads = [threading.Thread(target=another_writer), threading.Thread(target=deploy)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert [a.status_code for a in answers] == [202], answers[0].json() if answers else None
    assert deadlocks_logged() == before
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    assert Deployment.objects.filter(change_id=change.pk).count() == 1
    report = verify_chain()
    assert report.ok, report.problem


def test_events_of_a_rolled_back_savepoint_never_reach_the_chain(demo):
    """Sealed at commit, an event follows its transaction: a savepoint rolled back takes
    its events with it, the rest are chained in order."""
    from audit.models import AuditEvent

    with transaction.atomic():
        audit_record(actor=demo.oncall, action="thing.kept", object_type="thing", object_id=1)
        try:
            with transaction.atomic():
                audit_record(actor=demo.oncall, action="thing.dropped", object_type="thing",
                             object_id=2)
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        audit_record(actor=demo.oncall, action="thing.kept", object_type="thing", object_id=3)
    assert not AuditEvent.objects.filter(action="thing.dropped").exists()
    kept = list(AuditEvent.objects.filter(action="thing.kept").order_by("id"))
    assert [e.object_id for e in kept] == ["1", "3"]
    assert kept[1].prev_hash == kept[0].hash
    assert verify_chain().ok


def test_a_deadlock_is_a_409_to_try_again_never_database_unavailable(demo, monkeypatch):
    """A transaction PostgreSQL cancelled to break a deadlock is run again; if it keeps
    dying the client gets 409 ``concurrent_update``, not 503 ``database_unavailable``."""
    import psycopg

    from approvals import api as approvals_api

    change = approved_staging_change(demo)
    client = token_client(demo.engineer)
    calls = []

    def dies_of_a_deadlock(**kwargs):
        calls.append(1)
        try:
            with connection.cursor() as cursor:
                # A real 40P01 from the server, as a deadlock victim receives it.
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', "
                               "MESSAGE = 'chosen to break a lock cycle (test)'; END $$")
        except OperationalError as exc:
            assert isinstance(exc.__cause__, psycopg.errors.DeadlockDetected)
            raise

    monkeypatch.setattr(approvals_api.services, "change_request_deploy", dies_of_a_deadlock)
    answer = client.post(f"/api/v1/changes/{change.pk}/deploy", format="json")
    assert answer.status_code == 409
    assert answer.json()["code"] == "concurrent_update"
    assert answer["Retry-After"]
    # Run again a bounded number of times, then answered.
    from core import transient

    assert len(calls) == transient.ATTEMPTS
    monkeypatch.undo()
    # Nothing of it was saved, and the same request now succeeds.
    assert Deployment.objects.filter(change_id=change.pk).count() == 0
    assert client.post(f"/api/v1/changes/{change.pk}/deploy",
                       format="json").status_code == 202


def test_a_request_that_dies_once_of_a_deadlock_succeeds_on_its_retry(demo, monkeypatch):
    from approvals import api as approvals_api

    change = approved_staging_change(demo)
    client = token_client(demo.engineer)
    real = approvals_api.services.change_request_deploy
    calls = []

    def first_attempt_dies(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            with connection.cursor() as cursor:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', "
                               "MESSAGE = 'could not serialize access (test)'; END $$")
        return real(**kwargs)

    monkeypatch.setattr(approvals_api.services, "change_request_deploy", first_attempt_dies)
    answer = client.post(f"/api/v1/changes/{change.pk}/deploy", format="json")
    assert answer.status_code == 202, answer.json()
    assert len(calls) == 2
    assert Deployment.objects.filter(change_id=change.pk).count() == 1


def test_a_celery_task_whose_transaction_dies_of_a_deadlock_runs_again():
    from celery import shared_task

    from core.transient import ATTEMPTS, RetryTransientTask

    runs = []

    @shared_task(name="tests.security.flaky_transaction")
    def flaky_transaction():
        runs.append(1)
        if len(runs) < 3:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', "
                               "MESSAGE = 'chosen to break a lock cycle (test)'; END $$")
        return "done"

    assert isinstance(flaky_transaction, RetryTransientTask)
    assert flaky_transaction.apply().get() == "done"
    assert len(runs) == 3 < ATTEMPTS + 1


def test_a_minute_of_mixed_use_sees_no_deadlock_and_no_server_error(
        demo, celery_worker_process):
    """Changes requested, decided, reported on by CI and deployed, tokens used, and the
    worker running deployments step by step, all at once for ``SOAK_SECONDS``."""
    before = deadlocks_logged()
    deadline = time.monotonic() + SOAK_SECONDS
    to_decide_tech, to_decide_qa, to_deploy = queue.Queue(), queue.Queue(), queue.Queue()
    answers: list[tuple[str, int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()
    clients = {name: token_client(getattr(demo, name))
               for name in ("engineer", "techlead", "qa", "ci", "oncall", "auditor")}
    for name in list(clients):
        clients[name + "-2"] = token_client(getattr(demo, name))

    def note(actor: str, response) -> None:
        code = ""
        if response.status_code >= 300:
            try:
                code = response.json().get("code", "")
            except ValueError:
                code = "?"
        with lock:
            answers.append((actor, response.status_code, code))

    def loop(name, body):
        try:
            while time.monotonic() < deadline:
                body()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"{name}: {exc!r}")
        finally:
            connection.close()

    def engineer():
        release = ReleaseFactory()
        when_approved = random.random() < 0.5
        response = clients["engineer"].post("/api/v1/changes/", {
            "release": release.pk, "environment": "staging", "change_type": "standard",
            "strategy": "all_at_once", "rollback_plan": "Redeploy the previous version.",
            "deploy_when_approved": when_approved}, format="json")
        note("engineer", response)
        if response.status_code == 201:
            change_id = response.json()["id"]
            to_decide_tech.put(change_id)
            to_decide_qa.put((change_id, when_approved))
        try:
            change_id = to_deploy.get_nowait()
        except queue.Empty:
            return
        note("engineer", clients["engineer-2"].post(f"/api/v1/changes/{change_id}/deploy",
                                                    format="json"))

    def decider(user, role, inbox):
        def body():
            try:
                item = inbox.get(timeout=0.5)
            except queue.Empty:
                return
            change_id, when_approved = item if isinstance(item, tuple) else (item, True)
            note(user, clients[user].post(f"/api/v1/changes/{change_id}/approve",
                                          {"gate": role, "comment": "ok"}, format="json"))
            if not when_approved:
                to_deploy.put(change_id)
        return body

    def ci():
        release = ReleaseFactory()
        for check in ("tests", "security_scan"):
            note("ci", clients[random.choice(["ci", "ci-2"])].post("/api/v1/hooks/ci", {
                "release": release.pk, "check": check, "status": "passed"}, format="json"))

    def readers():
        who = random.choice(["auditor", "auditor-2", "oncall", "oncall-2", "engineer"])
        path = random.choice(["/api/v1/changes/", "/api/v1/deployments/",
                              "/api/v1/audit-events/", "/api/v1/environments/"])
        note(who, clients[who].get(path))

    threads = [
        threading.Thread(target=loop, args=("engineer", engineer)),
        threading.Thread(target=loop, args=("techlead", decider("techlead", "tech_lead",
                                                                 to_decide_tech))),
        threading.Thread(target=loop, args=("qa", decider("qa", "qa", to_decide_qa))),
        threading.Thread(target=loop, args=("ci", ci)),
        threading.Thread(target=loop, args=("readers", readers)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SOAK_SECONDS + 120)
    assert not any(thread.is_alive() for thread in threads)

    assert failures == []
    server_errors = [a for a in answers if a[1] >= 500]
    assert server_errors == []
    unexpected = [a for a in answers if a[1] >= 300 and a[1] not in EXPECTED_REFUSALS]
    assert unexpected == []
    assert not [a for a in answers if a[2] in ("concurrent_update", "database_unavailable")]
    # Every kind of work happened, and deployments ran on the worker meanwhile.
    done = {(actor, status) for actor, status, _ in answers}
    for expected in (("engineer", 201), ("techlead", 200), ("qa", 200), ("ci", 200),
                     ("engineer", 202)):
        assert expected in done, sorted(done)
    assert Deployment.objects.exclude(status="queued").exists()
    assert deadlocks_logged() == before
    report = verify_chain()
    assert report.ok, report.problem
