"""Hooks: CI results and authorship, push to development, Alertmanager rollbacks."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from approvals.models import ChangeRequest
from audit.models import AuditEvent
from catalog.models import Release
from deployments.models import Deployment
from tests.api.helpers import finished_deployment
from tests.factories import ReleaseFactory


@pytest.fixture
def ci_bot(demo, settings):
    """The service account signed hooks act as: an engineer (and on call, for rollbacks)."""
    user = get_user_model().objects.get(username="ci-bot")
    user.groups.add(Group.objects.get(name="on-call"))
    settings.PORTAL_HOOK_USER = "ci-bot"
    return user


def test_ci_reports_checks_and_authorship_with_a_signed_body(ci_bot, signed_post):
    release = ReleaseFactory()
    answer = signed_post("ci", {"release": release.pk, "check": "tests", "status": "passed",
                                "url": "https://ci.example/run/7", "authors": ["alice"]})
    assert answer.status_code == 200, answer.json()
    signed_post("ci", {"release": release.pk, "check": "security_scan", "status": "failed",
                       "critical": 2, "authors": ["bob"], "mergers": ["carol"]})
    release.refresh_from_db()
    assert release.checks["tests"]["status"] == "passed"
    assert release.checks["tests"]["url"] == "https://ci.example/run/7"
    assert release.checks["security_scan"] == {**release.checks["security_scan"],
                                               "status": "failed", "critical": 2}
    assert release.authors == ["alice", "bob"] and release.mergers == ["carol"]
    event = AuditEvent.objects.filter(action="release.checks_reported").latest("id")
    assert event.actor_name == "ci-bot (token ci hook)"
    assert event.after["check"] == "security_scan"


def test_a_wrong_signature_or_an_unconfigured_secret_is_401(ci_bot, signed_post, settings):
    release = ReleaseFactory()
    body = {"release": release.pk, "check": "tests", "status": "passed"}
    forged = signed_post("ci", body, sign_with="not-the-secret")
    assert forged.status_code == 401
    assert forged.json()["code"] == "authentication_failed"
    unconfigured = signed_post("ci", body, secret="")
    assert unconfigured.status_code == 401
    assert Release.objects.get(pk=release.pk).checks == release.checks


def test_a_hook_secret_opens_only_its_own_hook(ci_bot, settings):
    import json

    from rest_framework.test import APIClient

    from integrations.hooks import sign

    settings.PORTAL_HOOK_SECRET_CI = "ci-secret"
    settings.PORTAL_HOOK_SECRET_PUSH = "ci-secret"
    raw = json.dumps({"application": "storefront", "version": "5.0.0"}).encode()
    # The push hook checks the signature with its own secret, which happens to match,
    # but the credential is the push hook's; posting it to the CI hook is refused.
    answer = APIClient().post("/api/v1/hooks/push", data=raw, content_type="application/json",
                              HTTP_X_PORTAL_SIGNATURE=sign("ci-secret", raw))
    assert answer.status_code == 202
    other = APIClient().get("/api/v1/changes/", HTTP_X_PORTAL_SIGNATURE=sign("ci-secret", b""))
    assert other.status_code in (401, 403)


def test_ci_hook_refuses_people_who_may_not_register_releases(demo, api):
    release = ReleaseFactory()
    answer = api(demo.qa).post("/api/v1/hooks/ci", {"release": release.pk, "check": "tests",
                                                    "status": "passed"}, format="json")
    assert answer.status_code == 403 and answer.json()["code"] == "not_permitted"


def test_only_ci_accounts_report_checks_not_the_engineers_whose_release_it_is(demo, api):
    release = ReleaseFactory(checks={"security_scan": {"status": "failed", "critical": 2}})
    forged = api(demo.engineer).post("/api/v1/hooks/ci", {
        "release": release.pk, "check": "security_scan", "status": "passed", "critical": 0},
        format="json")
    assert forged.status_code == 403
    release.refresh_from_db()
    assert release.checks["security_scan"]["status"] == "failed"
    reported = api(demo.ci).post("/api/v1/hooks/ci", {
        "release": release.pk, "check": "security_scan", "status": "passed", "critical": 0},
        format="json")
    assert reported.status_code == 200


def test_ci_hook_needs_check_and_status_together(demo, api):
    release = ReleaseFactory()
    answer = api(demo.engineer).post("/api/v1/hooks/ci", {"release": release.pk,
                                                          "check": "tests"}, format="json")
    assert answer.status_code == 400 and "status" in answer.json()["fields"]


def test_a_push_registers_the_release_and_deploys_it_to_development(demo, api):
    ci = api(demo.ci)
    body = {"application": "storefront", "version": "5.1.0", "ref": "refs/heads/main",
            "commit_sha": "abcdef1", "authors": ["alice"]}
    answer = ci.post("/api/v1/hooks/push", body, format="json")
    assert answer.status_code == 202, answer.json()
    result = answer.json()
    assert result["release_created"] is True and result["status"] == "queued"
    change = ChangeRequest.objects.get(pk=result["change"])
    assert change.environment.slug == "development" and change.gates.count() == 0
    deployment = Deployment.objects.get(pk=result["deployment"])
    assert deployment.environment.slug == "development"
    assert Release.objects.get(pk=result["release"]).authors == ["alice"]

    again = ci.post("/api/v1/hooks/push", body, format="json").json()
    assert again["release_created"] is False
    assert (again["change"], again["deployment"]) == (result["change"], result["deployment"])
    assert Deployment.objects.count() == 1


def test_a_push_needs_deploy_rights_on_development(demo, api):
    answer = api(demo.qa).post("/api/v1/hooks/push", {"application": "storefront",
                                                      "version": "5.2.0"}, format="json")
    assert answer.status_code == 403


def alert(action="trigger_rollback", status="firing", **labels):
    labels = {"alertname": "high_error_rate", "action": action, **labels}
    # Alertmanager's fingerprint is a hash of the alert's labels.
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    return {"status": status, "fingerprint": fingerprint, "labels": labels,
            "startsAt": "2026-01-01T00:00:00Z",
            "annotations": {"summary": "error rate above 1%"}}


def test_alertmanager_trigger_rollback_rolls_back_the_latest_deployment(ci_bot, signed_post):
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    body = {"version": "4", "status": "firing", "receiver": "portal",
            "alerts": [alert(application="storefront", environment="production"),
                       alert(action="notify_team", application="storefront",
                             environment="production")]}
    answer = signed_post("alertmanager", body)
    assert answer.status_code == 200, answer.json()
    rolled, notified = answer.json()["results"]
    assert rolled["outcome"] == "rolled_back", rolled
    assert rolled["deployment"] == latest.pk
    rollback = Deployment.objects.get(pk=rolled["rollback_deployment"])
    assert rollback.environment.slug == "production"
    latest.refresh_from_db()
    assert latest.status == "rolled_back"
    assert notified["outcome"] == "notified"
    assert AuditEvent.objects.filter(action="alert.received").count() == 1

    # The same signed body again is a replay; nothing is rolled back twice.
    repeated = signed_post("alertmanager", body).json()
    assert repeated["duplicate"] is True
    assert Deployment.objects.filter(kind="rollback").count() == 1


def test_alertmanager_without_a_deployment_or_resolved_alerts_do_not_roll_back(ci_bot,
                                                                             signed_post):
    body = {"alerts": [alert(application="storefront", environment="staging"),
                       alert(status="resolved", application="storefront",
                             environment="staging")]}
    results = signed_post("alertmanager", body).json()["results"]
    assert [r["outcome"] for r in results] == ["no_deployment", "notified"]
    assert not Deployment.objects.exists()


def test_alertmanager_with_a_malformed_body_is_400(ci_bot, signed_post):
    answer = signed_post("alertmanager", {"alerts": [{"labels": "nope"}]})
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
