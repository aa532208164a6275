"""Tokens act for their owner only, with a fresh second factor (docs/security.md 11).

Each test tries a bypass as an attacker would and checks that it is refused, that
nothing changed, and that the refusal is on the audit trail.
"""

from __future__ import annotations

import io
import re
import threading
from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from approvals import services as approvals
from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from audit.trail import System
from catalog import services as catalog_services
from catalog.models import Environment
from core.errors import NotEligible, Refused
from deployments import services as deployments
from deployments.models import Deployment, DeploymentStep
from identity.models import ApiToken
from identity.services import api_token_issue
from tests.api.helpers import finished_deployment
from tests.conftest import sign_in_with_second_factor, totp_code
from tests.factories import request_change

RAW = re.compile(r"cap_[\w-]+")
STALE = settings.PORTAL_STEP_UP_SECONDS + 4  # the review saw a decision 604 s after


def unused_code(user, *, step: int = 0) -> str:
    """The TOTP code of ``step`` periods from now, not yet used by ``user`` (a code is
    accepted once; other tests may have used this period's code for the same person)."""
    code = totp_code(step=step)
    cache.delete(f"allauth.mfa.totp.used?user={user.pk}&code={code}")
    return code


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def operator_token(user, *scopes: str) -> tuple[ApiToken, str]:
    """A token as ``manage.py issue_token`` issues it: no check of its own."""
    return api_token_issue(actor=System("manage.py issue_token"), user=user,
                           name=f"op-{user.username}-{ApiToken.objects.count()}",
                           scopes=list(scopes) or None)


def hotfix(demo):
    """The administrator's own Production hotfix, waiting for tech lead and CAB."""
    return request_change(demo.admin, "production", change_type="hotfix",
                          rollback_plan="Redeploy the previous release", on_call=demo.oncall)


def nothing_decided(change) -> None:
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert not Approval.objects.filter(change=change).exists()


def refusals(code: str, **filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="second_factor.refused", after__code=code,
                                          **filters).order_by("id"))


def stale_session(client, user, *, seconds: int):
    """Sign in with a real TOTP check, then age that check by ``seconds``."""
    sign_in_with_second_factor(client, user)
    session = client.session
    records = session["account_authentication_methods"]
    for record in records:
        record["at"] -= seconds
    session["account_authentication_methods"] = records
    session.save()
    return client


# --- 2. Tokens for oneself; administrators for service accounts only ---------------------


def test_an_administrator_cannot_issue_tokens_that_act_as_other_people(demo):
    change = hotfix(demo)
    page = sign_in_with_second_factor(Client(), demo.admin)
    form = page.get("/tokens/").content.decode()
    # The page offers service accounts only.
    assert f'value="{demo.cab.pk}"' not in form
    assert f'value="{get_user_model().objects.get(username="ci-bot").pk}"' in form

    # The review's attack: tokens for cab, security and business, approve and deploy,
    # ten years. The posted form is refused for each of them, and each try is recorded.
    for victim in (demo.cab, demo.security, demo.business, demo.techlead):
        answer = page.post("/tokens/", {"name": f"as-{victim.username}", "days": 3650,
                                        "scopes": ["read", "approve", "deploy"],
                                        "user": victim.pk})
        assert answer.status_code == 400
        assert "service accounts only" in answer.content.decode()
        assert not RAW.search(answer.content.decode())
    # The service refuses whoever calls it.
    with pytest.raises(Refused) as refused:
        api_token_issue(actor=demo.admin, user=demo.cab, name="direct",
                        scopes=["approve"])
    assert refused.value.code == "not_permitted"
    # The admin site issues no tokens at all.
    admin_site = Client()
    admin_site.force_login(demo.admin)
    assert admin_site.get("/admin/identity/apitoken/add/").status_code == 403

    assert not ApiToken.objects.exclude(user=demo.admin).exists()
    recorded = AuditEvent.objects.filter(action="token.issue.refused", actor=demo.admin)
    assert sorted(e.after["user"] for e in recorded) == [
        "business", "cab", "cab", "security", "techlead"]
    nothing_decided(change)


def test_a_person_makes_tokens_for_themselves_only(demo):
    client = Client()
    client.force_login(demo.engineer)
    page = client.post("/tokens/", {"name": "mine", "days": 7, "scopes": ["read"],
                                    "user": demo.qa.pk})

    assert page.status_code == 200
    assert ApiToken.objects.get(name="mine").user == demo.engineer
    assert not ApiToken.objects.filter(user=demo.qa).exists()
    with pytest.raises(Refused):
        api_token_issue(actor=demo.engineer, user=demo.qa, name="theirs")
    assert not ApiToken.objects.filter(user=demo.qa).exists()
    assert AuditEvent.objects.get(action="token.issue.refused").after["user"] == "qa"


def test_a_service_account_never_decides_a_gate_whatever_it_holds(demo, api):
    ci_bot = get_user_model().objects.get(username="ci-bot")
    # An administrator gives the service account approval rights, and a token.
    ci_bot.groups.add(Group.objects.get(name="qa"), Group.objects.get(name="cab"))
    page = sign_in_with_second_factor(Client(), demo.admin)
    issued = page.post("/tokens/", {"name": "ci-approver", "days": 3650,
                                    "scopes": ["read", "approve", "deploy"],
                                    "user": ci_bot.pk})
    assert issued.status_code == 200
    bot = bearer(RAW.search(issued.content.decode()).group(0))
    staging = request_change(demo.engineer, "staging")
    production = hotfix(demo)

    on_staging = bot.post(f"/api/v1/changes/{staging.pk}/approve", {"gate": "qa"},
                          format="json")
    on_production = bot.post(f"/api/v1/changes/{production.pk}/approve", {"gate": "cab"},
                             format="json")
    with pytest.raises(NotEligible) as direct:
        approvals.gate_reject(actor=ci_bot, change=staging, role="qa", comment="no")

    assert on_staging.status_code == 403 and on_staging.json()["code"] == "service_account"
    assert on_production.status_code == 403
    assert on_production.json()["code"] == "service_account"
    assert direct.value.code == "service_account"
    nothing_decided(production)
    staging.refresh_from_db()
    assert not Approval.objects.filter(change=staging).exists()
    assert AuditEvent.objects.filter(action="gate.approved.refused", actor=ci_bot,
                                     after__code="service_account").count() == 2
    assert AuditEvent.objects.filter(action="gate.rejected.refused", actor=ci_bot,
                                     after__code="service_account").count() == 1


def test_issue_token_is_the_operators_tool_and_its_tokens_carry_no_second_factor(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    out = io.StringIO()
    call_command("issue_token", "cab", "--name", "ops", "--days", "3650", stdout=out)
    token = ApiToken.objects.get(user=demo.cab, name="ops")

    answer = bearer(out.getvalue().strip()).post(f"/api/v1/changes/{change.pk}/approve",
                                                 {"gate": "cab"}, format="json")

    assert token.second_factor == "" and token.second_factor_at is None
    issued = AuditEvent.objects.get(action="token.issued", object_id=str(token.pk))
    assert issued.actor_kind == "system" and issued.after["issued_by"] == "operator"
    assert issued.after["second_factor"] is None
    assert "manage.py issue_token, run by the operator" in issued.reason
    assert answer.status_code == 403 and answer.json()["code"] == "step_up_required"
    nothing_decided(change)
    [refusal] = refusals("step_up_required", actor=demo.cab)
    assert refusal.environment == "production"
    assert refusal.after["second_factor"]["via"] == "token"
    assert refusal.after["second_factor"]["fresh"] is False


def test_an_old_operator_token_counts_for_nobody(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    # Tokens issued before this rule recorded the operator's word as a check.
    token, raw = operator_token(demo.cab, "read", "approve")
    ApiToken.objects.filter(pk=token.pk).update(second_factor="operator",
                                                second_factor_at=timezone.now())

    answer = bearer(raw).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                              format="json")

    assert answer.status_code == 403 and answer.json()["code"] == "step_up_required"
    nothing_decided(change)
    assert len(refusals("step_up_required", actor=demo.cab)) == 1


# --- 3. A token's check counts for PORTAL_STEP_UP_SECONDS; step-up through the API ------


def test_a_token_made_after_a_step_up_does_not_decide_production_once_the_check_is_old(
        demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    cache.delete(f"allauth.mfa.totp.used?user={demo.cab.pk}&code={totp_code()}")
    page = sign_in_with_second_factor(Client(), demo.cab)
    made = page.post("/tokens/", {"name": "laptop", "days": 90,
                                  "scopes": ["read", "approve"]})
    raw = RAW.search(made.content.decode()).group(0)
    token = ApiToken.objects.get(name="laptop")
    assert token.second_factor == "totp"
    # The review's case: the same token, 604 s after the check it was made with.
    checked_at = timezone.now() - timedelta(seconds=STALE)
    ApiToken.objects.filter(pk=token.pk).update(second_factor_at=checked_at)
    cab = bearer(raw)

    old = cab.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"}, format="json")

    assert old.status_code == 403 and old.json()["code"] == "step_up_required"
    assert "/api/v1/auth/step-up" in old.json()["detail"]
    nothing_decided(change)
    [refusal] = refusals("step_up_required", actor=demo.cab)
    assert refusal.after["second_factor"]["fresh"] is False
    assert refusal.after["second_factor"]["age_seconds"] >= STALE
    assert refusal.after["doing"] == "approve a Production gate"

    # The owner answers the check through the token: it decides until fresh_until.
    stepped = cab.post("/api/v1/auth/step-up", {"code": unused_code(demo.cab, step=1)},
                       format="json")
    assert stepped.status_code == 200, stepped.json()
    assert stepped.json()["kind"] == "totp"
    token.refresh_from_db()
    assert stepped.json()["fresh_until"].startswith(
        (token.second_factor_at + timedelta(seconds=settings.PORTAL_STEP_UP_SECONDS))
        .isoformat()[:19])
    decided = cab.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                       format="json")
    assert decided.status_code == 200, decided.json()
    used = AuditEvent.objects.get(action="gate.approved").after["second_factor"]
    assert used["kind"] == "totp" and used["via"] == "token" and used["fresh"] is True
    assert used["at"] == token.second_factor_at.isoformat()
    assert 0 <= used["age_seconds"] < settings.PORTAL_STEP_UP_SECONDS
    assert AuditEvent.objects.get(action="token.stepped_up").after[
        "second_factor"]["kind"] == "totp"


def test_a_step_up_counts_for_that_token_only(demo):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    _, first = operator_token(demo.cab, "read", "approve")
    _, second = operator_token(demo.cab, "read", "approve")

    assert bearer(first).post("/api/v1/auth/step-up", {"code": unused_code(demo.cab)},
                              format="json").status_code == 200
    other = bearer(second).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                                format="json")

    assert other.status_code == 403 and other.json()["code"] == "step_up_required"
    nothing_decided(change)


def test_wrong_step_up_codes_are_refused_limited_and_audited(demo, settings):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    token, raw = operator_token(demo.cab, "read", "approve")
    cab = bearer(raw)
    limit = settings.PORTAL_STEP_UP_MAX_FAILURES
    right = unused_code(demo.cab)
    wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"

    answers = [cab.post("/api/v1/auth/step-up", {"code": wrong}, format="json")
               for _ in range(limit)]
    # Past the limit even the right code is refused, and not used up.
    locked = cab.post("/api/v1/auth/step-up", {"code": right}, format="json")
    malformed = [cab.post("/api/v1/auth/step-up", body, format="json")
                 for body in ({}, {"code": ""}, {"code": "9" * 65}, {"code": ["1"]})]
    decision = cab.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "cab"},
                        format="json")

    assert [(a.status_code, a.json()["code"]) for a in answers] == [(403, "wrong_code")] * limit
    assert locked.status_code == 403 and locked.json()["code"] == "too_many_attempts"
    assert all(a.status_code == 400 and a.json()["code"] == "invalid" for a in malformed)
    assert decision.status_code == 403 and decision.json()["code"] == "step_up_required"
    token.refresh_from_db()
    assert token.second_factor == ""
    nothing_decided(change)
    assert AuditEvent.objects.filter(action="token.step_up.failed", actor=demo.cab,
                                     object_id=str(token.pk)).count() == limit
    assert AuditEvent.objects.get(action="token.step_up.refused").after[
        "code"] == "too_many_attempts"
    # Once the failures are out of the window (the trail is append-only, so the window
    # moves instead of the events), the right code works.
    settings.PORTAL_STEP_UP_FAILURE_MINUTES = 0
    assert cab.post("/api/v1/auth/step-up", {"code": right},
                    format="json").status_code == 200


def test_a_code_counts_once_and_a_recovery_code_works_once(demo):
    _, first = operator_token(demo.security, "read", "approve")
    _, second = operator_token(demo.security, "read", "approve")
    code = unused_code(demo.security)
    recovery = RecoveryCodes.activate(demo.security)
    spare = recovery.get_unused_codes()[0]

    assert bearer(first).post("/api/v1/auth/step-up", {"code": code},
                              format="json").status_code == 200
    reused = bearer(second).post("/api/v1/auth/step-up", {"code": code}, format="json")
    by_recovery = bearer(second).post("/api/v1/auth/step-up", {"code": spare},
                                      format="json")
    again = bearer(first).post("/api/v1/auth/step-up", {"code": spare}, format="json")

    assert reused.status_code == 403 and reused.json()["code"] == "wrong_code"
    assert by_recovery.status_code == 200 and by_recovery.json()["kind"] == "recovery_codes"
    assert again.status_code == 403 and again.json()["code"] == "wrong_code"
    assert AuditEvent.objects.filter(action="token.step_up.failed").count() == 2


def test_the_step_up_needs_a_deciding_token_and_a_factor_of_the_owners_own(demo):
    _, read_only = operator_token(demo.cab, "read")
    _, engineer = operator_token(demo.engineer, "read", "approve", "deploy")
    session = sign_in_with_second_factor(Client(), demo.cab)
    code = unused_code(demo.cab, step=1)

    scope = bearer(read_only).post("/api/v1/auth/step-up", {"code": code}, format="json")
    no_factor = bearer(engineer).post("/api/v1/auth/step-up", {"code": code}, format="json")
    by_session = session.post("/api/v1/auth/step-up", {"code": code},
                              content_type="application/json")
    anonymous = APIClient().post("/api/v1/auth/step-up", {"code": code}, format="json")

    assert scope.status_code == 403 and scope.json()["code"] == "insufficient_scope"
    assert no_factor.status_code == 403 and no_factor.json()["code"] == "mfa_required"
    assert by_session.status_code == 403 and by_session.json()["code"] == "token_required"
    assert anonymous.status_code == 401
    assert not ApiToken.objects.exclude(second_factor="").exists()
    assert AuditEvent.objects.get(action="token.step_up.refused",
                                  actor=demo.engineer).after["code"] == "mfa_required"


@pytest.mark.django_db(transaction=True)
def test_wrong_codes_sent_at_once_are_counted_one_after_the_other(demo):
    _, raw = operator_token(demo.cab, "read", "approve")
    limit = settings.PORTAL_STEP_UP_MAX_FAILURES
    senders = limit + 3
    barrier = threading.Barrier(senders)
    statuses: list[tuple[int, str]] = []
    wrong = f"{(int(totp_code()) + 500_000) % 1_000_000:06d}"

    def send():
        try:
            barrier.wait(timeout=30)
            answer = bearer(raw).post("/api/v1/auth/step-up", {"code": wrong},
                                      format="json")
            statuses.append((answer.status_code, answer.json()["code"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(statuses) == sorted([(403, "wrong_code")] * limit
                                      + [(403, "too_many_attempts")] * 3)
    assert AuditEvent.objects.filter(action="token.step_up.failed").count() == limit
    assert AuditEvent.objects.filter(action="token.step_up.refused").count() == 3


def test_the_step_up_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/auth/step-up"]["post"]
    assert "fresh_until" in str(schema["components"]["schemas"]["StepUpOut"])
    assert {"200", "400", "403"} <= set(operation["responses"])


# --- 7. Retry and mark done in Production need the step-up; refusals audited ------------


def _needs_attention_in_production() -> Deployment:
    deployment = finished_deployment("production", status="needs_attention", minutes_ago=1)
    Deployment.objects.filter(pk=deployment.pk).update(finished_at=None,
                                                       failure_reason="interrupted")
    DeploymentStep.objects.create(deployment=deployment, position=1, name="deploy",
                                  title="Deploy the new version", status="running",
                                  attempts=1)
    return deployment


def _untouched(deployment: Deployment) -> None:
    deployment.refresh_from_db()
    assert deployment.status == "needs_attention"
    assert deployment.steps.get().status == "running"
    assert not AuditEvent.objects.filter(
        action__in=("deployment.step_retried", "deployment.step_marked_done")).exists()


@pytest.mark.parametrize("verb", ["mark-step-done", "retry-step"])
def test_on_call_with_an_18_minute_old_check_cannot_decide_an_interrupted_step(demo, verb):
    deployment = _needs_attention_in_production()
    oncall = stale_session(Client(), demo.oncall, seconds=18 * 60)

    api = oncall.post(f"/api/v1/deployments/{deployment.pk}/{verb}",
                      {"reason": "checked the host"}, content_type="application/json")
    page = oncall.post(f"/deployments/{deployment.pk}/{verb}", {"reason": "checked"})

    assert api.status_code == 403 and api.json()["code"] == "step_up_required"
    assert page.status_code == 302 and "/2fa/reauthenticate/" in page["Location"]
    _untouched(deployment)
    recorded = refusals("step_up_required", actor=demo.oncall)
    assert len(recorded) == 2
    assert all(r.environment == "production" for r in recorded)
    assert recorded[0].after["second_factor"]["via"] == "session"
    assert recorded[0].after["second_factor"]["age_seconds"] >= 18 * 60
    assert "a step of a deployment in Production" in recorded[0].after["doing"]

    # With a token whose owner has not stepped up through it, and with none at all.
    _, raw = operator_token(demo.oncall, "read", "deploy")
    by_token = bearer(raw).post(f"/api/v1/deployments/{deployment.pk}/{verb}",
                                {"reason": "checked"}, format="json")
    Authenticator.objects.filter(user=demo.oncall).delete()
    no_factor = bearer(raw).post(f"/api/v1/deployments/{deployment.pk}/{verb}",
                                 {"reason": "checked"}, format="json")
    assert by_token.json()["code"] == "step_up_required"
    assert no_factor.status_code == 403 and no_factor.json()["code"] == "mfa_required"
    _untouched(deployment)
    assert len(refusals("step_up_required", actor=demo.oncall)) == 3
    assert len(refusals("mfa_required", actor=demo.oncall)) == 1


def test_a_fresh_check_lets_on_call_mark_the_step_done_and_is_recorded(demo):
    deployment = _needs_attention_in_production()
    client = sign_in_with_second_factor(Client(), demo.oncall)

    answer = client.post(f"/api/v1/deployments/{deployment.pk}/mark-step-done",
                         {"reason": "release directory complete on the host"},
                         content_type="application/json")

    assert answer.status_code == 202, answer.json()
    event = AuditEvent.objects.get(action="deployment.step_marked_done")
    assert event.after["second_factor"]["kind"] == "totp"
    assert event.after["second_factor"]["via"] == "session"
    assert event.after["second_factor"]["fresh"] is True


def test_a_staging_step_decision_needs_no_second_factor(demo):
    deployment = finished_deployment("staging", status="needs_attention", minutes_ago=1)
    Authenticator.objects.filter(user=demo.oncall).delete()

    deployments.deployment_retry_step(actor=demo.oncall, deployment=deployment)

    assert Deployment.objects.get(pk=deployment.pk).status == "running"
    assert not AuditEvent.objects.filter(action="second_factor.refused").exists()


def test_refusals_to_unlock_production_are_audited(demo):
    production = Environment.objects.get(slug="production")
    catalog_services.environment_lock(actor=demo.oncall, environment=production, reason="INC-9")
    oncall = stale_session(Client(), demo.oncall, seconds=18 * 60)

    page = oncall.post("/environments/", {"environment": "production", "action": "unlock"})

    assert page.status_code == 302 and "/2fa/reauthenticate/" in page["Location"]
    assert Environment.objects.get(slug="production").locked
    [refusal] = refusals("step_up_required", actor=demo.oncall)
    assert refusal.environment == "production"
    assert refusal.after["doing"] == "unlock Production"
    assert not AuditEvent.objects.filter(action="environment.unlocked").exists()
