"""Second factors for Production (SOP 10.2): who must hold one, the step-up before a
Production decision on every road, tokens, the idle timeout, the access review."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import encrypt
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from approvals import services
from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog import services as catalog_services
from catalog.models import Environment
from identity.assurance import SESSION_SEEN
from identity.models import ApiToken
from tests.api.helpers import finished_deployment
from tests.conftest import sign_in_with_second_factor, totp_code
from tests.factories import request_change

HIDDEN_VERSION = re.compile(r'name="fingerprint" value="([0-9a-f]+)"')
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def production_change(demo):
    """A standard Production change waiting for CAB, security and business."""
    return request_change(demo.engineer, "production", rollback_plan="Redeploy 1.2.0",
                          on_call=demo.oncall)


def nothing_decided(change) -> None:
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert not Approval.objects.filter(change=change).exists()
    assert not change.gates.exclude(status="pending").exists()


def without_factor(user):
    Authenticator.objects.filter(user=user).delete()
    return user


def csrf_of(html: str) -> str:
    return CSRF.search(html).group(1)


def test_totp_step_up_completes_the_approval_with_what_was_typed(demo):
    change = production_change(demo)
    client = Client(enforce_csrf_checks=True)
    client.force_login(demo.cab)
    html = client.get(f"/changes/{change.pk}/").content.decode()
    typed = "Rollback plan read; window agreed with the business."

    response = client.post(f"/changes/{change.pk}/gates/cab/decide", {
        "decision": "approve", "comment": typed, "csrfmiddlewaretoken": csrf_of(html),
        "fingerprint": HIDDEN_VERSION.search(html).group(1)})

    # Asked for the second factor; nothing decided yet.
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/2fa/reauthenticate/?next=%2Fstep-up%2F")
    nothing_decided(change)
    check = client.get(response["Location"])
    assert check.status_code == 200
    token = csrf_of(check.content.decode())
    wrong = client.post(response["Location"], {"code": "000000", "csrfmiddlewaretoken": token})
    assert wrong.status_code == 200 and "code" in wrong.content.decode().lower()
    nothing_decided(change)

    code = totp_code()
    checked = client.post(response["Location"], {"code": code, "csrfmiddlewaretoken": token})
    assert checked.status_code == 302 and checked["Location"].startswith("/step-up/")
    resume = client.get(checked["Location"]).content.decode()
    # The page posts what was kept, with a new CSRF token, to where it was going.
    assert f'action="/changes/{change.pk}/gates/cab/decide"' in resume
    kept = dict(HIDDEN.findall(resume))
    assert kept["comment"] == typed
    done = client.post(f"/changes/{change.pk}/gates/cab/decide",
                       {**kept, "csrfmiddlewaretoken": csrf_of(resume)})
    assert done.status_code == 302

    approval = Approval.objects.get(change=change, approver=demo.cab)
    assert approval.comment == typed
    event = AuditEvent.objects.get(action="gate.approved")
    assert event.after["second_factor"]["kind"] == "totp"
    assert event.after["second_factor"]["via"] == "session"
    assert event.after["comment"] == typed
    # Kept once: the stash is gone after it was posted.
    assert client.get(checked["Location"]).status_code == 302

    # The same code again, in another session of the same person, is refused.
    other = Client()
    other.force_login(demo.cab)
    reused = other.post("/accounts/2fa/reauthenticate/", {"code": code})
    assert reused.status_code == 200
    assert not [r for r in other.session.get("account_authentication_methods", [])
                if r.get("method") == "mfa"]


def test_without_a_factor_production_is_refused_on_every_road_and_nothing_changes(demo, api):
    change = production_change(demo)
    cab = without_factor(demo.cab)

    response = api(cab).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                             format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "mfa_required"

    client = Client()
    client.force_login(cab)
    page = client.post(f"/changes/{change.pk}/gates/cab/decide",
                       {"decision": "approve", "fingerprint": services.change_version(change)})
    assert page.status_code == 403
    text = page.content.decode()
    assert "A second factor is needed" in text and "Enrol a second factor" in text
    # Every page says so until they enrol.
    assert "data-second-factor-banner" in client.get("/approvals/").content.decode()
    with pytest.raises(Exception) as refused:
        services.gate_approve(actor=cab, change=change, role="cab")
    assert refused.value.code == "mfa_required"

    nothing_decided(change)
    assert AuditEvent.objects.filter(action="gate.approved.refused",
                                     after__code="mfa_required").count() == 3


def test_a_staging_gate_needs_no_second_factor(demo, api):
    change = request_change(demo.engineer, "staging")
    techlead = without_factor(demo.techlead)

    response = api(techlead).post(f"/api/v1/changes/{change.pk}/approve",
                                  {"gate": "tech_lead"}, format="json")

    assert response.status_code == 200, response.json()
    assert "second_factor" not in AuditEvent.objects.get(action="gate.approved").after


def test_a_stale_second_factor_asks_again(demo):
    change = production_change(demo)
    client = sign_in_with_second_factor(Client(), demo.cab)
    session = client.session
    records = session["account_authentication_methods"]
    for record in records:
        record["at"] -= settings.PORTAL_STEP_UP_SECONDS + 1
    session["account_authentication_methods"] = records
    session.save()

    api_answer = client.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                             content_type="application/json")
    page = client.post(f"/changes/{change.pk}/gates/cab/decide",
                       {"decision": "approve", "fingerprint": services.change_version(change)})

    assert api_answer.status_code == 403
    assert api_answer.json()["code"] == "step_up_required"
    assert page.status_code == 302 and "/2fa/reauthenticate/" in page["Location"]
    nothing_decided(change)


def test_a_token_decides_production_only_if_made_with_a_fresh_second_factor(demo):
    change = production_change(demo)
    cab = without_factor(demo.cab)
    client = Client()
    client.force_login(cab)
    # Without a factor of their own, the page creates a token without asking.
    page = client.post("/tokens/", {"name": "laptop", "scopes": ["read", "approve"],
                                    "days": 7})
    raw = re.search(r"cap_[\w-]+", page.content.decode()).group(0)
    plain = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def approve():
        return plain.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                          content_type="application/json")

    assert approve().json()["code"] == "mfa_required"
    Authenticator.objects.create(user=cab, type=Authenticator.Type.TOTP,
                                 data={"secret": encrypt(settings.PORTAL_DEMO_TOTP_SECRET)})
    refused = approve()
    assert refused.status_code == 403
    assert refused.json()["code"] == "step_up_required"
    assert "/api/v1/auth/step-up" in refused.json()["detail"]
    nothing_decided(change)

    # Now the page asks for the second factor first, and the token records the check.
    asked = client.post("/tokens/", {"name": "stepped-up", "scopes": ["read", "approve"],
                                     "days": 7})
    assert "/2fa/reauthenticate/" in asked["Location"]
    assert not ApiToken.objects.filter(name="stepped-up").exists()
    checked = client.post(asked["Location"], {"code": totp_code()})
    resume = client.get(checked["Location"]).content.decode()
    shown = client.post("/tokens/", dict(HIDDEN.findall(resume)) | {
        "scopes": ["read", "approve"]})
    raw = re.search(r"cap_[\w-]+", shown.content.decode()).group(0)
    token = ApiToken.objects.get(name="stepped-up")
    assert token.second_factor == "totp"
    issued = AuditEvent.objects.filter(action="token.issued").latest("id")
    assert issued.after["second_factor"]["kind"] == "totp"

    decided = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").post(
        f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
        content_type="application/json")
    assert decided.status_code == 200, decided.json()
    event = AuditEvent.objects.get(action="gate.approved")
    assert event.after["second_factor"]["via"] == "token"
    assert event.after["second_factor"]["kind"] == "totp"


def test_issue_token_tokens_carry_no_second_factor_check(demo):
    out = io.StringIO()
    call_command("issue_token", "cab", "--name", "ops", stdout=out)
    call_command("issue_token", "engineer", "--name", "ops", stdout=io.StringIO())

    # The operator's word is nobody's second factor: the owner steps up through the token.
    assert ApiToken.objects.get(user=demo.cab, name="ops").second_factor == ""
    assert ApiToken.objects.get(user=demo.engineer, name="ops").second_factor == ""
    issued = AuditEvent.objects.filter(action="token.issued").latest("id")
    assert issued.actor_kind == "system" and issued.after["issued_by"] == "operator"
    assert issued.reason.startswith("manage.py issue_token, run by the operator ")


def test_rollback_and_unlock_in_production_ask_for_the_second_factor(demo, api):
    env = Environment.objects.get(slug="production")
    catalog_services.environment_lock(actor=demo.oncall, environment=env, reason="INC-7")
    client = Client()
    client.force_login(demo.oncall)

    asked = client.post("/environments/", {"environment": "production", "action": "unlock"})

    assert asked.status_code == 302 and "/2fa/reauthenticate/" in asked["Location"]
    assert Environment.objects.get(slug="production").locked
    checked = client.post(asked["Location"], {"code": totp_code()})
    resume = client.get(checked["Location"]).content.decode()
    client.post("/environments/", dict(HIDDEN.findall(resume)))
    assert not Environment.objects.get(slug="production").locked
    assert AuditEvent.objects.get(action="environment.unlocked").after[
        "second_factor"]["kind"] == "totp"

    # Rolling back Production with a token made without a fresh check: refused.
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    stale = api(demo.oncall)
    ApiToken.objects.filter(user=demo.oncall).update(second_factor="", second_factor_at=None)
    refused = stale.post(f"/api/v1/deployments/{latest.pk}/rollback", {"reason": "errors"},
                         format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "step_up_required"
    latest.refresh_from_db()
    assert latest.status == "succeeded"
    rolled = api(demo.oncall).post(f"/api/v1/deployments/{latest.pk}/rollback",
                                   {"reason": "errors"}, format="json")
    assert rolled.status_code == 202, rolled.json()
    assert AuditEvent.objects.get(action="deployment.rolled_back").after[
        "second_factor"]["via"] == "token"


def test_idle_timeout_signs_out_a_production_approver_but_not_an_engineer(demo):
    cab, engineer = Client(), Client()
    cab.force_login(demo.cab)
    engineer.force_login(demo.engineer)
    idle = settings.PORTAL_PRODUCTION_IDLE_MINUTES * 60
    for client in (cab, engineer):
        session = client.session
        session[SESSION_SEEN] = int(time.time()) - idle - 5
        session.save()

    cab_page = cab.get("/approvals/")
    engineer_page = engineer.get("/approvals/")

    assert cab_page.status_code == 302 and cab_page["Location"].startswith("/login/")
    assert cab.get("/approvals/").status_code == 302
    assert engineer_page.status_code == 200
    # Within the idle time a production approver stays signed in.
    fresh = Client()
    fresh.force_login(demo.cab)
    assert fresh.get("/approvals/").status_code == 200


def test_access_review_shows_factors_and_last_sign_in_and_exports_them(demo, client):
    cab = demo.cab
    Authenticator.objects.filter(user=cab).update(
        last_used_at=timezone.now() - timedelta(hours=2))
    cab.last_login = timezone.now() - timedelta(days=1)
    cab.save(update_fields=["last_login"])
    client.force_login(demo.auditor)

    page = client.get("/auditor/access/").content.decode()
    export = client.get("/auditor/access/export.csv")

    assert "Second factors" in page and "authenticator app" in page
    rows = {row["account"]: row for row in csv.DictReader(
        io.StringIO(b"".join(export.streaming_content if export.streaming else
                             [export.content]).decode()))}
    assert export["Content-Type"].startswith("text/csv")
    assert rows["cab"]["second_factors"] == "totp"
    assert rows["cab"]["factor_last_used"].startswith(
        (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%d"))
    assert rows["cab"]["last_sign_in"].startswith(cab.last_login.strftime("%Y-%m-%d"))
    assert rows["cab"]["must_have_second_factor"] == "yes"
    assert rows["engineer"]["second_factors"] == ""
    assert rows["engineer"]["must_have_second_factor"] == "no"
    assert "production: approve_cab" in rows["cab"]["permissions"]


def test_closing_a_review_asks_for_the_second_factor_and_keeps_the_findings(demo):
    from approvals.models import PostImplementationReview

    change = request_change(demo.engineer, "production", change_type="emergency",
                            rollback_plan="Redeploy 1.2.0")
    review = PostImplementationReview.objects.create(change=change)
    client = Client()
    client.force_login(demo.cab)
    findings = "Root cause found; monitoring added."

    asked = client.post(f"/changes/{change.pk}/review/close", {"findings": findings})

    assert "/2fa/reauthenticate/" in asked["Location"]
    review.refresh_from_db()
    assert review.closed_at is None
    checked = client.post(asked["Location"], {"code": totp_code()})
    resume = client.get(checked["Location"]).content.decode()
    client.post(f"/changes/{change.pk}/review/close", dict(HIDDEN.findall(resume)))
    review.refresh_from_db()
    assert review.closed_by == demo.cab and review.findings == findings
    assert AuditEvent.objects.get(action="review.closed").after[
        "second_factor"]["kind"] == "totp"


def test_asking_production_to_deploy_by_itself_needs_a_fresh_second_factor(demo, api):
    from tests.factories import ReleaseFactory

    release = ReleaseFactory()
    body = {"release": release.pk, "environment": "production", "rollback_plan": "Redeploy",
            "deploy_when_approved": True}
    # Nobody is asked for a factor when the portal starts it later, so the request is.
    stale = api(demo.admin)
    ApiToken.objects.filter(user=demo.admin).update(second_factor="", second_factor_at=None)
    refused = stale.post("/api/v1/changes/", body, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "step_up_required"
    assert not ChangeRequest.objects.filter(release=release).exists()
    assert AuditEvent.objects.get(action="change.create.refused").after["code"] == \
        "step_up_required"

    made = api(demo.admin).post("/api/v1/changes/", body, format="json")
    assert made.status_code == 201, made.json()
    created = AuditEvent.objects.get(action="change.created", object_id=str(made.json()["id"]))
    assert created.after["second_factor"]["via"] == "token"
    # Without asking the portal to start it, Production needs no check at request time.
    plain = stale.post("/api/v1/changes/", {**body, "deploy_when_approved": False,
                                            "release": ReleaseFactory().pk}, format="json")
    assert plain.status_code == 201, plain.json()
