"""Approve what you saw: a decision carries the version of the change its approver was
shown, and is refused if the change moved since; risk, impact and the scheduled time are
approval concerns; a delegate cannot decide where their delegator could not."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from approvals import services
from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog.models import Environment
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db

HIDDEN = re.compile(r'name="fingerprint" value="([0-9a-f]*)"')


def page_client(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def shown(client: Client, url: str) -> tuple[str, str]:
    """(the version the page's decision form carries, the CSRF token) as a browser has them."""
    html = client.get(url).content.decode()
    versions = HIDDEN.findall(html)
    assert versions, f"no decision form on {url}"
    return versions[0], client.cookies["csrftoken"].value


def decide(client: Client, change, role: str, *, version: str | None, token: str,
           decision: str = "approve", comment: str = "", **extra):
    data = {"decision": decision, "comment": comment, "csrfmiddlewaretoken": token}
    if version is not None:
        data["fingerprint"] = version
    return client.post(f"/changes/{change.pk}/gates/{role}/decide", data, **extra)


def nothing_decided(change) -> None:
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert not Approval.objects.filter(change=change).exists()
    assert not change.gates.exclude(status="pending").exists()


# The API --------------------------------------------------------------------------------------

def test_api_refuses_an_approval_of_a_version_that_is_no_longer_current(demo, api):
    change = request_change(demo.engineer, "staging")
    techlead = api(demo.techlead)
    seen = techlead.get(f"/api/v1/changes/{change.pk}/").json()["fingerprint"]
    services.change_request_update(actor=demo.engineer, change=change, strategy="canary")

    response = techlead.post(f"/api/v1/changes/{change.pk}/approve",
                             {"gate": "tech_lead", "fingerprint": seen}, format="json")

    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "changed_since_viewed"
    nothing_decided(change)
    refused = AuditEvent.objects.get(action="gate.approved.refused")
    assert refused.after["code"] == "changed_since_viewed"
    assert refused.after["version_seen"] == seen

    current = techlead.get(f"/api/v1/changes/{change.pk}/").json()["fingerprint"]
    assert current != seen
    ok = techlead.post(f"/api/v1/changes/{change.pk}/approve",
                       {"gate": "tech_lead", "fingerprint": current}, format="json")
    assert ok.status_code == 200, ok.json()
    approved = AuditEvent.objects.get(action="gate.approved")
    assert approved.after["version_seen"] == approved.after["version"] == current


def test_api_refuses_a_rejection_of_a_version_that_is_no_longer_current(demo, api):
    change = request_change(demo.engineer, "staging")
    qa = api(demo.qa)
    [listed] = qa.get("/api/v1/changes/").json()["results"]
    assert listed["fingerprint"] == qa.get(f"/api/v1/changes/{change.pk}/").json()[
        "fingerprint"]
    services.change_request_update(actor=demo.engineer, change=change,
                                   rollback_plan="Switch back to 1.1.0")
    response = qa.post(f"/api/v1/changes/{change.pk}/reject",
                       {"gate": "qa", "comment": "No", "fingerprint": listed["fingerprint"]},
                       format="json")
    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "changed_since_viewed"
    nothing_decided(change)
    assert AuditEvent.objects.filter(action="gate.rejected.refused").count() == 1


def test_api_decision_without_a_fingerprint_is_recorded_as_blind(demo, api):
    change = request_change(demo.engineer, "staging")
    response = api(demo.techlead).post(f"/api/v1/changes/{change.pk}/approve",
                                       {"gate": "tech_lead"}, format="json")
    assert response.status_code == 200, response.json()
    approved = AuditEvent.objects.get(action="gate.approved")
    assert approved.after["version_seen"] is None
    assert approved.after["version"] == response.json()["fingerprint"]


# The pages ------------------------------------------------------------------------------------

def test_change_page_refuses_a_decision_on_what_it_no_longer_shows(demo):
    change = request_change(demo.engineer, "staging")
    client = page_client(demo.techlead)
    version, token = shown(client, f"/changes/{change.pk}/")
    services.change_request_update(actor=demo.engineer, change=change, risk="high")

    response = decide(client, change, "tech_lead", version=version, token=token, follow=True)

    assert "changed since you opened it" in response.content.decode()
    nothing_decided(change)
    refused = AuditEvent.objects.get(action="gate.approved.refused")
    assert refused.after["code"] == "changed_since_viewed"
    assert refused.actor_name == "techlead"


def test_a_decision_form_without_the_version_decides_nothing(demo):
    change = request_change(demo.engineer, "staging")
    client = page_client(demo.techlead)
    _, token = shown(client, f"/changes/{change.pk}/")
    decide(client, change, "tech_lead", version=None, token=token)
    nothing_decided(change)
    assert AuditEvent.objects.get(action="gate.approved.refused").after["code"] == \
        "changed_since_viewed"


def test_change_page_decision_on_the_version_shown_is_recorded(demo):
    change = request_change(demo.engineer, "staging")
    client = page_client(demo.techlead)
    version, token = shown(client, f"/changes/{change.pk}/")
    decide(client, change, "tech_lead", version=version, token=token)
    approval = Approval.objects.get(change=change)
    assert approval.approver == demo.techlead
    assert AuditEvent.objects.get(action="gate.approved").after["version_seen"] == version


def test_inbox_card_refuses_a_decision_on_what_it_no_longer_shows(demo):
    change = request_change(demo.engineer, "staging")
    client = page_client(demo.qa)
    version, token = shown(client, "/approvals/")
    services.change_request_update(actor=demo.engineer, change=change,
                                   impact="Checkout down for a minute")

    response = decide(client, change, "qa", version=version, token=token, decision="reject",
                      comment="Not now", HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "changed since you opened it" in html
    # The card offers no form for a version it no longer shows; it sends to the change.
    assert 'name="fingerprint"' not in html
    assert f"Open {change.reference} to see what changed" in html
    nothing_decided(change)
    assert AuditEvent.objects.filter(action="gate.rejected.refused").count() == 1

    fresh, token = shown(client, "/approvals/")
    assert fresh != version
    decide(client, change, "qa", version=fresh, token=token, HTTP_HX_REQUEST="true")
    assert Approval.objects.get(change=change).approver == demo.qa


# Risk, impact and the scheduled time are approval concerns ------------------------------------

@pytest.mark.parametrize("field,value", [
    ("risk", "high"),
    ("impact", "Checkout unavailable for ten minutes"),
    ("scheduled_for", "LATER"),
])
def test_changing_what_cab_weighed_reopens_cab(demo, field, value):
    if value == "LATER":
        value = timezone.now() + timedelta(days=1)
    # on-call may deploy to production, so may set a time.
    change = request_change(demo.oncall, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall, risk="low", impact="None expected")
    services.gate_approve(actor=demo.cab, change=change, role="cab")
    services.gate_approve(actor=demo.security, change=change, role="security")

    services.change_request_update(actor=demo.oncall, change=change, **{field: value})

    assert change.gates.get(role="cab").status == "pending"
    cab = Approval.objects.get(change=change, approver=demo.cab)
    assert cab.withdrawn_at is not None
    assert field in cab.withdrawn_reason
    # Security did not decide on it: its approval stands.
    assert change.gates.get(role="security").status == "approved"
    invalidated = AuditEvent.objects.get(action="approval.invalidated")
    assert invalidated.after == {"role": "cab", "approver": "cab", "changed": [field]}


def test_changing_the_risk_in_the_edit_page_reopens_cab(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall, risk="low")
    services.gate_approve(actor=demo.cab, change=change, role="cab")
    client = page_client(demo.engineer)
    client.get(f"/changes/{change.pk}/edit/")
    response = client.post(f"/changes/{change.pk}/edit/", {
        "strategy": change.strategy, "risk": "high", "impact": "", "rollback_plan": "Redeploy",
        "on_call": "oncall", "scheduled_for": "",
        "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302
    assert change.gates.get(role="cab").status == "pending"


# Delegates stand in for their delegator, conflicts included ------------------------------------

def delegate(delegator, delegate_to, role, environment="production"):
    return services.delegation_create(
        actor=delegator, environment=Environment.objects.get(slug=environment), role=role,
        delegate=delegate_to, expires_at=timezone.now() + timedelta(days=1))


def test_delegate_of_the_requester_cannot_approve_through_the_api(demo, api):
    change = request_change(demo.techlead, "production", change_type="hotfix",
                            rollback_plan="Redeploy", on_call=demo.oncall)
    delegate(demo.techlead, demo.qa, "tech_lead")

    response = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve",
                                 {"gate": "tech_lead"}, format="json")

    assert response.status_code == 403, response.json()
    assert response.json()["code"] == "delegate_conflict"
    nothing_decided(change)
    refused = AuditEvent.objects.get(action="gate.approved.refused")
    assert refused.after["code"] == "delegate_conflict"
    assert refused.actor_name.startswith("qa")


def test_delegate_of_the_requester_cannot_approve_in_the_page(demo, api):
    change = request_change(demo.techlead, "production", change_type="hotfix",
                            rollback_plan="Redeploy", on_call=demo.oncall)
    delegate(demo.techlead, demo.qa, "tech_lead")
    client = page_client(demo.qa)
    html = client.get(f"/changes/{change.pk}/").content.decode()
    # The page offers no decision and says why.
    assert not HIDDEN.findall(html)
    assert "a delegate cannot decide a change their delegator could not" in html
    # A forged form (the version read from the API) is refused all the same.
    version = api(demo.qa).get(f"/api/v1/changes/{change.pk}/").json()["fingerprint"]
    token = client.cookies["csrftoken"].value
    response = decide(client, change, "tech_lead", version=version, token=token, follow=True)
    assert "a delegate cannot decide a change their delegator could not" in \
        response.content.decode()
    nothing_decided(change)
    assert AuditEvent.objects.get(action="gate.approved.refused").after["code"] == \
        "delegate_conflict"


def test_delegate_of_an_author_cannot_approve_but_of_another_holder_can(demo):
    release = ReleaseFactory(authors=["cab"])
    change = request_change(demo.engineer, "production", release=release,
                            rollback_plan="Redeploy", on_call=demo.oncall)
    delegate(demo.cab, demo.business, "cab")

    with pytest.raises(Exception) as exc:
        services.gate_approve(actor=demo.business, change=change, role="cab")
    assert exc.value.code == "delegate_conflict"
    nothing_decided(change)

    # Standing in for a CAB member without the conflict is fine, and recorded as such.
    delegate(demo.cab2, demo.business, "cab")
    services.gate_approve(actor=demo.business, change=change, role="cab")
    approval = Approval.objects.get(change=change)
    assert approval.on_behalf_of == demo.cab2
