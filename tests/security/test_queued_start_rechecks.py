"""A deployment that waits in the queue starts later, when its target frees: before it
does, its approvals are checked again, as at every other start. If CI reported an
approver as an author or merger meanwhile, or the approvals no longer match what it
would run, it never runs a step: its gates reopen, the change waits for approval
again, the deployment is cancelled with the reason in its log and audit trail, and the
queue moves on to the next one."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test import Client, TestCase

from approvals import services as approvals
from approvals.models import ChangeRequest, Gate
from audit.models import AuditEvent
from deployments import services as engine
from deployments.models import Deployment, DeploymentStep
from tests.conftest import wait_for
from tests.factories import ReleaseFactory, executor_app, request_change


def approved(demo, app, version: str) -> ChangeRequest:
    """A staging change of ``app`` ``version``, approved by the tech lead and QA."""
    change = request_change(demo.engineer, "staging",
                            release=ReleaseFactory(application=app, version=version))
    approvals.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approvals.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    return change


def deploy(api, demo, change) -> dict:
    response = api(demo.engineer).post(f"/api/v1/changes/{change.pk}/deploy")
    assert response.status_code == 202, response.content
    return response.json()


def ci_reports(api, demo, change, **people) -> None:
    response = api(demo.ci).post("/api/v1/hooks/ci", {"release": change.release_id, **people},
                                 format="json")
    assert response.status_code == 200, response.content


def never_ran(deployment: Deployment) -> None:
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.CANCELLED
    assert deployment.started_at is None
    assert not DeploymentStep.objects.filter(deployment=deployment).exclude(
        status="pending").exists()
    assert not AuditEvent.objects.filter(action="deployment.started",
                                         object_id=str(deployment.pk)).exists()


def refused_and_reopened(change, deployment, *, roles: set[str], words: str) -> None:
    """The refusal as the record and the people see it."""
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert {g.role for g in change.gates.filter(status=Gate.Status.PENDING)} == roles
    assert words in deployment.failure_reason
    assert deployment.log_lines.filter(level="error", message__contains=words).exists()
    cancelled = AuditEvent.objects.get(action="deployment.cancelled",
                                       object_id=str(deployment.pk))
    assert words in cancelled.reason
    refused = AuditEvent.objects.get(action="change.start_refused", object_id=str(change.pk))
    assert refused.after["deployment"] == deployment.pk and words in refused.reason
    assert refused.before["status"] == "deploying" and refused.after["status"] == \
        "pending_approval"
    assert {e.after["role"] for e in AuditEvent.objects.filter(
        action="approval.invalidated", object_id=str(change.pk))} == roles


def _end(deployment, status="succeeded"):
    """End ``deployment`` as its worker does; what runs after commit runs too."""
    with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk)
        engine.deployment_finish(deployment=locked, status=status)


@pytest.fixture(autouse=True)
def _runs_here_only(request, settings):
    """Tests without the real worker run deployments in this process; a task queued to
    the session's worker would race them for the run's lock (the worker tries it before
    it finds the row, which it cannot see), so nothing is sent to it: tasks are held
    (``core.dispatch``)."""
    if request.node.get_closest_marker("worker") is None:
        settings.PORTAL_TASK_DISPATCH = "hold"


def _running(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(status="running", attempts=1)
    deployment.refresh_from_db()
    return deployment


# --- with a real worker: the queue's promotion ------------------------------------------------

@pytest.fixture
def held_command(tmp_path):
    """A deploy command that records the version it deploys, then holds its step until the
    test opens the gate file (an event, not a pause); bounded at 60 s."""
    ran, gate = tmp_path / "ran.log", tmp_path / "gate"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import pathlib, sys, time\n"
        f"open({str(ran)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    if time.monotonic() > deadline:\n"
        "        sys.exit(1)\n"
        "    time.sleep(0.05)\n")
    return f"{sys.executable} {script} {{version}}", ran, gate


def ran_versions(ran: Path) -> list[str]:
    return ran.read_text().splitlines() if ran.exists() else []


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_queued_deployment_never_runs_after_ci_names_its_approver_an_author(
        demo, api, celery_worker_process, held_command):
    command, ran, gate = held_command
    app, _ = executor_app("command", {"commands": {"deploy": command}, "timeout": 90})
    first, second, third = (approved(demo, app, v) for v in ("1.0.0", "1.1.0", "1.2.0"))

    head = deploy(api, demo, first)
    assert head["queued"] is False
    wait_for(lambda: ran_versions(ran) == ["1.0.0"], timeout=60)  # the head is in its step
    waiting = deploy(api, demo, second)
    behind = deploy(api, demo, third)
    assert (waiting["queued"], waiting["queue_position"]) == (True, 1)
    assert (behind["queued"], behind["queue_position"]) == (True, 2)

    # While the second waits, CI reports that its tech lead approver wrote its commits.
    ci_reports(api, demo, second, authors=["techlead"])
    gate.touch()  # the head's step ends; the target frees

    last = Deployment.objects.get(pk=behind["deployment"])
    wait_for(lambda: Deployment.objects.get(pk=last.pk).is_final, timeout=90)
    refused = Deployment.objects.get(pk=waiting["deployment"])
    never_ran(refused)
    assert ran_versions(ran) == ["1.0.0", "1.2.0"]  # 1.1.0's command never ran
    refused_and_reopened(second, refused, roles={"tech_lead"},
                         words="techlead wrote commits in")
    assert AuditEvent.objects.get(action="approval.invalidated",
                                  object_id=str(second.pk)).after["code"] == "author"

    # The queue moved on: a deployment whose facts did not change still starts from it.
    last.refresh_from_db()
    assert last.status == Deployment.Status.SUCCEEDED, last.failure_reason
    third.refresh_from_db()
    assert third.status == ChangeRequest.Status.DEPLOYED
    assert Deployment.objects.get(pk=head["deployment"]).status == "succeeded"

    # The API and the change page say why.
    body = api(demo.engineer).get(f"/api/v1/changes/{second.pk}/").json()
    assert body["status"] == "pending_approval" and "gate_tech_lead" in body["blockers"]
    [lead] = [g for g in body["gates"] if g["gate"] == "tech_lead"]
    assert lead["status"] == "pending"
    assert "techlead wrote commits in" in lead["approvals"][0]["withdrawn_reason"]
    assert body["deployment"] == refused.pk
    detail = api(demo.engineer).get(f"/api/v1/deployments/{refused.pk}/").json()
    assert detail["status"] == "cancelled"
    assert "techlead wrote commits in" in detail["failure_reason"]
    client = Client()
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{second.pk}/").content.decode()
    assert "not started: the Tech lead approval by techlead no longer counts" in page
    assert f'action="/changes/{second.pk}/deploy"' not in page


@pytest.mark.django_db(transaction=True)
def test_a_ci_report_racing_the_promotion_never_lets_the_deployment_run(demo, api):
    """The head's end (which promotes the next one) and CI's report, in two threads and
    transactions at once: whichever commits first, the waiting deployment never runs.
    No worker takes it here (its message is kept back); the test claims it as one would,
    after both."""
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    ci = api(demo.ci)
    start = threading.Barrier(2)
    errors = []

    def end_head():
        try:
            start.wait(timeout=10)
            with transaction.atomic():
                locked = (Deployment.objects.select_for_update()
                          .select_related("environment").get(pk=head.pk))
                engine.deployment_finish(deployment=locked, status=Deployment.Status.SUCCEEDED)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def report():
        try:
            start.wait(timeout=10)
            answer = ci.post("/api/v1/hooks/ci", {"release": second.release_id,
                                                  "authors": ["techlead"]}, format="json")
            assert answer.status_code == 200, answer.content
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=end_head), threading.Thread(target=report)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []

    assert engine.deployment_run(deployment_id=queued.pk) is None

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"tech_lead"},
                         words="techlead wrote commits in")


# --- without a worker: each start of a queued deployment --------------------------------------

@pytest.mark.django_db
def test_a_merger_reported_after_promotion_is_caught_when_the_worker_claims_it(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    assert not queued.holds_target
    _end(head)
    queued.refresh_from_db()
    assert queued.holds_target and queued.status == "queued"  # promoted, not yet claimed

    ci_reports(api, demo, second, mergers=["qa"])
    assert engine.deployment_run(deployment_id=queued.pk) is None

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"qa"}, words="qa merged commits in")


@pytest.mark.django_db
def test_a_queued_deployment_whose_inputs_were_changed_behind_the_approvals_never_runs(
        demo):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    # Someone with the database's hands points the waiting deployment at another command.
    tampered = {**queued.inputs, "executor_settings": {"commands": {"deploy": "curl evil"}}}
    Deployment.objects.filter(pk=queued.pk).update(inputs=tampered)

    _end(head)

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"tech_lead", "qa"},
                         words="approval was given before the executor changed")
    invalidated = AuditEvent.objects.filter(action="approval.invalidated",
                                            object_id=str(second.pk))
    assert all(e.after["changed"] == ["executor"] for e in invalidated)


@pytest.mark.django_db
def test_the_sweep_promoting_a_queue_checks_too_and_moves_on(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second, third = (approved(demo, app, v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    refused = approvals.change_request_deploy(actor=demo.engineer, change=second)
    fine = approvals.change_request_deploy(actor=demo.engineer, change=third)
    ci_reports(api, demo, second, authors=["qa"])
    # The head ended without starting the next one (a repair in the database).
    Deployment.objects.filter(pk=head.pk).update(status="failed")

    with TestCase.captureOnCommitCallbacks(execute=True):
        engine.deployments_resume_stale()

    never_ran(refused)
    refused_and_reopened(second, refused, roles={"qa"}, words="qa wrote commits in")
    fine.refresh_from_db()
    assert fine.holds_target and fine.status == "queued"


@pytest.mark.django_db
def test_a_queued_deployment_of_a_change_that_is_no_longer_deploying_never_runs(demo):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    # The change was cancelled in the database while its deployment waited.
    ChangeRequest.objects.filter(pk=second.pk).update(status="cancelled")

    _end(head)

    never_ran(queued)
    assert "is cancelled, not deploying" in queued.failure_reason
    assert AuditEvent.objects.get(action="deployment.cancelled",
                                  object_id=str(queued.pk)).actor_kind == "system"


@pytest.mark.django_db
def test_facts_that_do_not_touch_the_approvers_let_the_queued_deployment_start(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    ci_reports(api, demo, second, authors=["someone-else"], mergers=["engineer"])

    _end(head)

    assert engine.deployment_run(deployment_id=queued.pk) == Deployment.Status.SUCCEEDED
    second.refresh_from_db()
    assert second.status == ChangeRequest.Status.DEPLOYED
    assert not AuditEvent.objects.filter(action__in=["approval.invalidated",
                                                     "change.start_refused"]).exists()


@pytest.mark.django_db
def test_a_rollback_from_the_queue_is_not_held_by_the_changes_approvals(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    good = approvals.change_request_deploy(actor=demo.engineer, change=first)
    assert engine.deployment_run(deployment_id=good.pk) == Deployment.Status.SUCCEEDED
    bad = _running(approvals.change_request_deploy(actor=demo.engineer, change=second))
    ci_reports(api, demo, second, authors=["techlead"])

    rollback = engine.deployment_rollback(actor=demo.oncall, deployment=bad,
                                          reason="errors are up")

    assert engine.deployment_run(deployment_id=rollback.pk) is not None
    rollback.refresh_from_db()
    assert rollback.status != Deployment.Status.CANCELLED
    assert not AuditEvent.objects.filter(action="change.start_refused").exists()
