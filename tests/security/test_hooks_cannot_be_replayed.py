"""Hooks cannot be replayed: a delivery is applied once, a stale signature is refused,
an older CI result never overwrites a newer one, and an alert acts once and never
rolls back a rollback."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from catalog.models import Release
from deployments.models import Deployment
from integrations.hooks import hook_deliveries_purge, sign, sign_standard
from integrations.models import HookDelivery
from tests.api.helpers import finished_deployment
from tests.factories import ReleaseFactory

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItcmVwbGF5LXRlc3Rz"  # base64 of a test key


@pytest.fixture
def hooks_signed(demo, settings):
    """The service account signed hooks act as (an engineer, on call), and the secrets."""
    user = get_user_model().objects.get(username="ci-bot")
    user.groups.add(Group.objects.get(name="on-call"))
    settings.PORTAL_HOOK_USER = "ci-bot"
    for hook in ("CI", "PUSH", "ALERTMANAGER"):
        setattr(settings, f"PORTAL_HOOK_SECRET_{hook}", SECRET)
    return user


def deliver(hook: str, body: dict, *, delivery_id: str | None = None,
            timestamp: int | None = None, signature: str | None = None, secret=SECRET):
    """POST a Standard Webhooks delivery; returns the answer."""
    raw = json.dumps(body).encode()
    delivery_id = delivery_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = signature or sign_standard(secret, delivery_id, timestamp, raw)
    return APIClient().post(f"/api/v1/hooks/{hook}", data=raw, content_type="application/json",
                            HTTP_WEBHOOK_ID=delivery_id, HTTP_WEBHOOK_TIMESTAMP=str(timestamp),
                            HTTP_WEBHOOK_SIGNATURE=signature)


def check_report(release, status="passed", **extra):
    return {"release": release.pk, "check": "tests", "status": status, **extra}


def reports(release) -> int:
    return AuditEvent.objects.filter(action="release.checks_reported",
                                     object_id=str(release.pk)).count()


def rollback_alert(fingerprint="3fa1c0de", starts_at="2026-11-29T10:00:00Z"):
    return {"status": "firing", "fingerprint": fingerprint, "startsAt": starts_at,
            "labels": {"alertname": "high_error_rate", "action": "trigger_rollback",
                       "application": "storefront", "environment": "production"},
            "annotations": {"summary": "error rate above 1%"}}


# --- the same delivery twice ------------------------------------------------------------


def test_a_replayed_webhook_id_is_answered_as_a_duplicate_and_applied_once(hooks_signed):
    body = {"application": "storefront", "version": "7.0.0", "ref": "refs/heads/main"}
    first = deliver("push", body, delivery_id="msg_push_1", timestamp=int(time.time()))
    assert first.status_code == 202, first.json()
    counts = (Release.objects.count(), Deployment.objects.count())

    replay = deliver("push", body, delivery_id="msg_push_1")
    assert replay.status_code == 200
    assert replay.json()["duplicate"] is True
    assert (Release.objects.count(), Deployment.objects.count()) == counts
    event = AuditEvent.objects.get(action="hook.replay_ignored")
    assert event.object_id == "push" and event.after == {"delivery": ["id:msg_push_1"]}


def test_a_replayed_ci_report_is_not_recorded_twice(hooks_signed):
    release = ReleaseFactory(checks={})
    assert deliver("ci", check_report(release), delivery_id="msg_ci_1").status_code == 200
    again = deliver("ci", check_report(release), delivery_id="msg_ci_1")
    assert again.json()["duplicate"] is True
    assert reports(release) == 1


def test_a_stale_or_future_timestamp_is_401_and_changes_nothing(hooks_signed):
    release = ReleaseFactory(checks={})
    for skew in (-6 * 60, 6 * 60):
        answer = deliver("ci", check_report(release), timestamp=int(time.time()) + skew)
        assert answer.status_code == 401, answer.json()
        assert answer.json()["code"] == "stale_signature"
    release.refresh_from_db()
    assert release.checks == {} and reports(release) == 0
    assert not HookDelivery.objects.exists()


def test_a_timestamp_within_five_minutes_is_accepted(hooks_signed):
    release = ReleaseFactory(checks={})
    answer = deliver("ci", check_report(release), timestamp=int(time.time()) - 4 * 60)
    assert answer.status_code == 200, answer.json()


def test_a_bad_signature_or_missing_delivery_headers_are_401(hooks_signed):
    release = ReleaseFactory(checks={})
    forged = deliver("ci", check_report(release), secret="whsec_bm90LXRoZS1zZWNyZXQ=")
    assert forged.status_code == 401 and forged.json()["code"] == "authentication_failed"
    # A signature made for another delivery id does not cover this one.
    raw = json.dumps(check_report(release)).encode()
    now = int(time.time())
    moved = deliver("ci", check_report(release), delivery_id="msg_other", timestamp=now,
                    signature=sign_standard(SECRET, "msg_original", now, raw))
    assert moved.status_code == 401
    no_id = APIClient().post("/api/v1/hooks/ci", data=raw, content_type="application/json",
                             HTTP_WEBHOOK_SIGNATURE=sign_standard(SECRET, "", now, raw),
                             HTTP_WEBHOOK_TIMESTAMP=str(now))
    assert no_id.status_code == 401
    assert Release.objects.get(pk=release.pk).checks == {} and reports(release) == 0


def test_any_of_several_signatures_may_match_for_key_rotation(hooks_signed):
    release = ReleaseFactory(checks={})
    raw = json.dumps(check_report(release)).encode()
    now = int(time.time())
    old = sign_standard("whsec_b2xkLWtleQ==", "msg_rot", now, raw)
    new = sign_standard(SECRET, "msg_rot", now, raw)
    answer = deliver("ci", check_report(release), delivery_id="msg_rot", timestamp=now,
                     signature=f"{old} {new}")
    assert answer.status_code == 200, answer.json()


def test_github_signatures_need_their_delivery_id_and_a_redelivered_body_applies_once(
        hooks_signed, settings):
    settings.PORTAL_HOOK_SECRET_CI = "github-secret"
    release = ReleaseFactory(checks={})
    raw = json.dumps(check_report(release)).encode()

    def post(**headers):
        return APIClient().post("/api/v1/hooks/ci", data=raw, content_type="application/json",
                                HTTP_X_HUB_SIGNATURE_256=sign("github-secret", raw), **headers)

    assert post().status_code == 401  # no X-GitHub-Delivery
    assert post(HTTP_X_GITHUB_DELIVERY="d-1").status_code == 200
    assert post(HTTP_X_GITHUB_DELIVERY="d-1").json()["duplicate"] is True
    # Only the body is signed, so a replay with a fresh delivery id is still the same body.
    assert post(HTTP_X_GITHUB_DELIVERY="d-2").json()["duplicate"] is True
    assert reports(release) == 1


def test_token_calls_work_without_delivery_ids_and_honour_them_when_sent(demo, api):
    release = ReleaseFactory(checks={})
    ci = api(demo.ci)
    for _ in range(2):
        answer = ci.post("/api/v1/hooks/ci", check_report(release), format="json")
        assert answer.status_code == 200 and answer.json()["superseded"] is False
    assert reports(release) == 2
    first = ci.post("/api/v1/hooks/ci", check_report(release), format="json",
                    HTTP_WEBHOOK_ID="token-delivery-1")
    again = ci.post("/api/v1/hooks/ci", check_report(release), format="json",
                    HTTP_WEBHOOK_ID="token-delivery-1")
    assert first.status_code == 200 and again.json()["duplicate"] is True
    assert reports(release) == 3


def test_a_refused_delivery_is_not_remembered_so_its_retry_can_apply(hooks_signed):
    hooks_signed.groups.clear()  # the service account may no longer report
    release = ReleaseFactory(checks={})
    refused = deliver("ci", check_report(release), delivery_id="msg_retry")
    assert refused.status_code == 403
    assert not HookDelivery.objects.exists()
    hooks_signed.groups.add(Group.objects.get(name="ci"), Group.objects.get(name="engineers"))
    assert deliver("ci", check_report(release), delivery_id="msg_retry").status_code == 200
    assert reports(release) == 1


def test_delivery_ids_past_their_retention_are_purged(hooks_signed, settings):
    settings.PORTAL_HOOK_DELIVERY_RETENTION_DAYS = 30
    old = HookDelivery.objects.create(hook="ci", key="id:old",
                                      received_at=timezone.now() - timedelta(days=31))
    recent = HookDelivery.objects.create(hook="ci", key="id:recent")
    assert hook_deliveries_purge() == 1
    assert list(HookDelivery.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not HookDelivery.objects.filter(pk=old.pk).exists()


# --- CI reports arrive out of order -----------------------------------------------------


def test_an_older_ci_report_does_not_overwrite_a_newer_one(hooks_signed):
    release = ReleaseFactory(checks={})
    now = timezone.now()
    newer = deliver("ci", check_report(release, "passed", reported_at=now.isoformat()))
    assert newer.json()["superseded"] is False
    late = deliver("ci", check_report(release, "failed",
                                      reported_at=(now - timedelta(minutes=3)).isoformat()))
    assert late.status_code == 200 and late.json()["superseded"] is True
    release.refresh_from_db()
    assert release.checks["tests"]["status"] == "passed"
    event = AuditEvent.objects.filter(action="release.checks_reported").latest("id")
    assert event.after["superseded"] is True

    later = deliver("ci", check_report(release, "failed",
                                       reported_at=(now + timedelta(seconds=1)).isoformat()))
    assert later.json()["superseded"] is False
    release.refresh_from_db()
    assert release.checks["tests"]["status"] == "failed"


def test_a_ci_report_dated_in_the_future_is_refused(hooks_signed):
    release = ReleaseFactory(checks={})
    future = (timezone.now() + timedelta(days=1)).isoformat()
    answer = deliver("ci", check_report(release, reported_at=future))
    assert answer.status_code == 400 and "reported_at" in answer.json()["fields"]
    assert Release.objects.get(pk=release.pk).checks == {} and reports(release) == 0
    assert not HookDelivery.objects.exists()


# --- alerts -------------------------------------------------------------------------------


def test_the_same_alert_delivered_twice_rolls_back_once(hooks_signed):
    finished_deployment("production", minutes_ago=120)
    latest = finished_deployment("production", minutes_ago=10)
    body = {"status": "firing", "alerts": [rollback_alert()]}
    first = deliver("alertmanager", body).json()["results"][0]
    assert first["outcome"] == "rolled_back" and first["deployment"] == latest.pk
    # Alertmanager resends the firing alert in a new notification (a new delivery id).
    second = deliver("alertmanager", body).json()["results"][0]
    assert second["outcome"] == "duplicate"
    assert Deployment.objects.filter(kind="rollback").count() == 1
    assert AuditEvent.objects.filter(action="deployment.rolled_back").count() == 1


def test_an_alert_never_rolls_back_a_rollback(hooks_signed):
    good = finished_deployment("production", minutes_ago=120)
    bad = finished_deployment("production", minutes_ago=60, status="rolled_back")
    rollback = finished_deployment("production", minutes_ago=10, release=good.release)
    Deployment.objects.filter(pk=rollback.pk).update(kind="rollback",
                                                     rolled_back_deployment=bad)
    before = Deployment.objects.count()

    result = deliver("alertmanager", {"alerts": [rollback_alert()]}).json()["results"][0]
    assert result["outcome"] == "refused" and result["code"] == "is_rollback"
    assert f"#{rollback.pk} is itself a rollback" in result["detail"]
    assert Deployment.objects.count() == before
    assert Deployment.objects.get(pk=rollback.pk).status == "succeeded"
    refusal = AuditEvent.objects.get(action="alert.rollback_refused")
    assert refusal.object_id == str(rollback.pk) and refusal.after["code"] == "is_rollback"


# --- races ----------------------------------------------------------------------------------


def race(calls):
    barrier = threading.Barrier(len(calls))
    answers = []

    def run(call):
        try:
            barrier.wait()
            answers.append(call())
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_id_apply_once(hooks_signed):
    for round_ in range(5):
        release = ReleaseFactory(checks={})
        delivery_id = f"msg_race_{round_}"
        now = int(time.time())
        answers = race([lambda r=release, d=delivery_id, t=now: deliver(
            "ci", check_report(r), delivery_id=d, timestamp=t) for _ in range(4)])
        assert sorted(a.status_code for a in answers) == [200] * 4
        applied = [a for a in answers if "duplicate" not in a.json()]
        assert len(applied) == 1
        assert reports(release) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_notifications_of_one_alert_roll_back_once(hooks_signed):
    finished_deployment("production", minutes_ago=120)
    finished_deployment("production", minutes_ago=10)
    body = {"alerts": [rollback_alert()]}
    answers = race([lambda: deliver("alertmanager", body) for _ in range(4)])
    outcomes = sorted(a.json()["results"][0]["outcome"] for a in answers)
    assert outcomes.count("rolled_back") == 1
    assert Deployment.objects.filter(kind="rollback").count() == 1
