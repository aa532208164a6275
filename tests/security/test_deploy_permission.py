"""Starting a deployment always needs `deploy` on the environment.

Asking the portal to start it by itself (deploy when approved, or at a scheduled time)
is starting it: the requester needs `deploy` there, the permission is checked again when
the deployment starts, and the deployment acts as that person, not as the last approver.
"""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import remove_perm

from approvals import services
from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog import services as catalog_services
from catalog.models import Environment
from core.errors import Refused
from deployments.models import Deployment
from notifications.models import Kind, Notification
from tests.conftest import totp_code
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db


def env(slug):
    return Environment.objects.get(slug=slug)


def page_client(user) -> Client:
    """A browser-like client: CSRF enforced, the token taken from the page's cookie."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post_form(client: Client, form_url: str, data: dict, *, to: str | None = None, **extra):
    assert client.get(form_url).status_code == 200
    token = client.cookies["csrftoken"].value
    return client.post(to or form_url, {**data, "csrfmiddlewaretoken": token}, **extra)


def in_an_hour():
    return timezone.now() + timedelta(hours=1)


def revoke_deploy(group_name: str, environment: str) -> None:
    remove_perm("catalog.deploy", Group.objects.get(name=group_name), env(environment))


# Asking for a self-starting deployment --------------------------------------------------------

@pytest.mark.parametrize("option", [{"deploy_when_approved": True},
                                    {"scheduled_for": "SCHEDULE"}])
def test_non_deployer_cannot_ask_the_api_to_deploy_a_production_change_for_them(demo, api,
                                                                                option):
    release = ReleaseFactory()
    if "scheduled_for" in option:
        option = {"scheduled_for": in_an_hour().isoformat()}
    response = api(demo.engineer).post("/api/v1/changes/", {
        "release": release.pk, "environment": "production", "change_type": "standard",
        "rollback_plan": "Redeploy the previous release", "on_call": "oncall", **option},
        format="json")

    assert response.status_code == 403, response.json()
    assert response.json()["code"] == "not_permitted"
    [field] = option
    assert field in response.json()["fields"]
    assert not ChangeRequest.objects.exists()
    refused = AuditEvent.objects.get(action="change.create.refused")
    assert refused.actor_name.startswith("engineer")
    assert refused.environment == "production"
    assert refused.after["code"] == "not_permitted"


def test_non_deployer_cannot_ask_the_page_form_to_deploy_a_production_change(demo):
    client = page_client(demo.engineer)
    release = ReleaseFactory()
    response = post_form(client, "/changes/new/", {
        "release": release.pk, "environment": "production", "change_type": "standard",
        "strategy": "all_at_once", "rollback_plan": "Redeploy", "on_call": "oncall",
        "deploy_when_approved": "on",
        "scheduled_for": in_an_hour().strftime("%Y-%m-%dT%H:%M")})

    assert response.status_code == 400
    html = response.content.decode()
    # The error stands next to each field that asked for it.
    assert 'id="id_deploy_when_approved_error"' in html
    assert 'id="id_scheduled_for_error"' in html
    assert "You may not deploy to Production" in html
    assert not ChangeRequest.objects.exists()
    assert AuditEvent.objects.filter(action="change.create.refused",
                                     environment="production").count() == 1


def test_deployer_who_asks_is_recorded_as_the_deployer(demo, api):
    response = api(demo.oncall).post("/api/v1/changes/", {
        "release": ReleaseFactory().pk, "environment": "production",
        "change_type": "standard", "rollback_plan": "Redeploy", "on_call": "oncall",
        "deploy_when_approved": True}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["deployer"] == "oncall"
    change = ChangeRequest.objects.get()
    assert change.deployer == demo.oncall


def test_requester_without_deploy_cannot_add_a_schedule_in_the_edit_page(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    services.gate_approve(actor=demo.cab, change=change, role="cab")
    client = page_client(demo.engineer)
    when = in_an_hour().strftime("%Y-%m-%dT%H:%M")
    response = post_form(client, f"/changes/{change.pk}/edit/", {
        "strategy": change.strategy, "risk": "", "impact": "", "rollback_plan": "Redeploy",
        "on_call": "oncall", "scheduled_for": when})

    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_scheduled_for_error"' in html
    assert "You may not deploy to Production" in html
    change.refresh_from_db()
    assert change.scheduled_for is None and change.deployer is None
    # Nothing moved: the CAB approval still stands.
    assert change.gates.get(role="cab").status == "approved"
    assert not AuditEvent.objects.filter(action="change.edited").exists()
    refused = AuditEvent.objects.get(action="change.edit.refused")
    assert refused.after["code"] == "not_permitted"
    assert refused.after["fields"] == ["scheduled_for"]


def test_the_edit_service_refuses_a_schedule_to_a_non_deployer(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy")
    with pytest.raises(Refused) as exc:
        services.change_request_update(actor=demo.engineer, change=change,
                                       scheduled_for=in_an_hour())
    assert exc.value.code == "not_permitted"
    change.refresh_from_db()
    assert change.scheduled_for is None
    assert AuditEvent.objects.filter(action="change.edit.refused").count() == 1


# The start: the deployer's permission checked again ------------------------------------------

def test_deploy_when_approved_starts_as_the_deployer_not_the_last_approver(demo, api):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    response = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                                 format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "deploying"

    deployment = Deployment.objects.get(change_id=change.pk)
    assert deployment.started_by == demo.engineer
    deploying = AuditEvent.objects.get(action="change.deploying")
    # The deployer acts, and not through the approver's API token.
    assert deploying.actor_name == "engineer"
    assert deploying.after["deployer"] == "engineer"
    assert "last approval" in deploying.after["trigger"]
    assert "qa" in deploying.after["trigger"]
    assert AuditEvent.objects.get(action="deployment.queued").actor_name == "engineer"


def test_last_approval_of_a_change_not_ready_yet_stands_and_nothing_starts(demo, api):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    catalog_services.environment_lock(actor=demo.oncall, environment=env("staging"),
                                      reason="INC-7 database failover")

    response = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                                 format="json")

    assert response.status_code == 200, response.json()
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert Approval.objects.filter(change=change, approver=demo.qa).exists()
    assert not Deployment.objects.filter(change_id=change.pk).exists()
    deferred = AuditEvent.objects.get(action="change.start_deferred")
    assert deferred.after["code"] == "not_ready"
    assert "environment_locked" in {b["code"] for b in deferred.after["blockers"]}


# Notifications leave after the decision commits: the transaction commits here.
@pytest.mark.django_db(transaction=True)
def test_deployer_who_lost_deploy_before_the_last_approval_does_not_deploy(demo, api):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    assert change.deployer == demo.engineer
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    revoke_deploy("engineers", "staging")

    response = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                                 format="json")

    # The decision is recorded; the deployment is not started, and not silently.
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "approved"
    assert not Deployment.objects.exists()
    assert Approval.objects.filter(change=change, approver=demo.qa).exists()
    refused = AuditEvent.objects.get(action="change.start_refused")
    assert refused.actor_name == "system"
    assert refused.after == {"status": "approved", "code": "not_permitted",
                             "deployer": "engineer",
                             "trigger": f"the last approval of {change.reference} "
                                        "(qa, by qa)"}
    assert not AuditEvent.objects.filter(action="change.deploying").exists()
    told = Notification.objects.filter(kind=Kind.START_REFUSED, change_id=change.pk)
    assert [n.recipient for n in told] == [demo.engineer.email]
    assert "may no longer deploy to Staging" in told[0].body

    # It stays approved for someone who may deploy there.
    deployed = api(demo.oncall).post(f"/api/v1/changes/{change.pk}/deploy")
    assert deployed.status_code == 202, deployed.json()
    assert Deployment.objects.get().started_by == demo.oncall


def test_deployer_who_lost_deploy_cannot_start_it_by_hand_either(demo):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    revoke_deploy("engineers", "staging")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    client = page_client(demo.engineer)
    response = post_form(client, f"/changes/{change.pk}/", {},
                         to=f"/changes/{change.pk}/deploy", follow=True)
    assert "you may not deploy to Staging" in response.content.decode()
    assert not Deployment.objects.exists()
    assert AuditEvent.objects.filter(action="change.deploy.refused").count() == 1


# Notifications leave after the decision commits: the transaction commits here.
@pytest.mark.django_db(transaction=True)
def test_scheduled_change_whose_deployer_lost_deploy_is_not_started_by_the_beat(demo):
    when = in_an_hour()
    change = request_change(demo.engineer, "staging", scheduled_for=when)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.SCHEDULED
    revoke_deploy("engineers", "staging")

    assert services.changes_start_scheduled(now=when + timedelta(seconds=1)) == []

    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    assert not Deployment.objects.exists()
    refused = AuditEvent.objects.get(action="change.start_refused")
    assert refused.after["deployer"] == "engineer"
    assert "scheduled for" in refused.after["trigger"]
    assert Notification.objects.filter(kind=Kind.START_REFUSED, change_id=change.pk,
                                       recipient=demo.engineer.email).count() == 1
    # A second beat does not try (or tell) again: the change is no longer scheduled.
    assert services.changes_start_scheduled(now=when + timedelta(minutes=1)) == []
    assert AuditEvent.objects.filter(action="change.start_refused").count() == 1


def test_scheduled_change_starts_as_its_deployer(demo):
    when = in_an_hour()
    change = request_change(demo.engineer, "staging", scheduled_for=when)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    [pk] = services.changes_start_scheduled(now=when + timedelta(seconds=1))
    assert Deployment.objects.get(pk=pk).started_by == demo.engineer
    deploying = AuditEvent.objects.get(action="change.deploying")
    assert deploying.actor_name == "engineer"
    assert deploying.after["deployer"] == "engineer"
    assert "scheduled for" in deploying.after["trigger"]


def test_a_schedule_set_in_the_edit_page_makes_its_setter_the_deployer(demo):
    change = request_change(demo.oncall, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    client = page_client(demo.oncall)
    form = {"strategy": change.strategy, "risk": "", "impact": "", "rollback_plan": "Redeploy",
            "on_call": "oncall", "scheduled_for": in_an_hour().strftime("%Y-%m-%dT%H:%M")}
    # A Production start by itself asks for the second factor first; nothing is set.
    response = post_form(client, f"/changes/{change.pk}/edit/", form)
    assert response.status_code == 302 and "/2fa/reauthenticate/" in response["Location"]
    change.refresh_from_db()
    assert change.scheduled_for is None and change.deployer is None
    # The code, then the page that sends the edit on as it was typed.
    checked = post_form(client, response["Location"], {"code": totp_code()})
    assert checked.status_code == 302
    resume = client.get(checked["Location"]).content.decode()
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resume))
    response = client.post(f"/changes/{change.pk}/edit/", fields)
    assert response.status_code == 302
    change.refresh_from_db()
    assert change.scheduled_for is not None and change.deployer == demo.oncall
