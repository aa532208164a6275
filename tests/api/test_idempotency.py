"""Idempotency-Key on creating POSTs (IETF draft): replay, misuse, in flight, races."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from approvals.models import ChangeRequest
from audit.models import AuditEvent
from catalog.models import Release
from core.idempotency import fingerprint, idempotency_keys_purge
from core.models import IdempotencyKey
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

RELEASE = {"application": "storefront", "version": "4.0.0", "notes": "Idempotent."}


def test_a_retry_with_the_same_key_replays_the_first_answer_and_acts_once(demo, api):
    ci = api(demo.engineer)
    first = ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Release.objects.filter(version="4.0.0").count() == 1
    assert AuditEvent.objects.filter(action="release.registered",
                                     object_repr="storefront 4.0.0").count() == 1


def test_a_retried_change_request_creates_one_change(demo, api):
    ci = api(demo.engineer)
    body = {"release": ReleaseFactory().pk, "environment": "staging"}
    answers = [ci.post("/api/v1/changes/", body, format="json",
                       HTTP_IDEMPOTENCY_KEY='"change-42"') for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert ChangeRequest.objects.count() == 1


def test_a_retried_deploy_starts_one_deployment(demo, api):
    change = request_change(demo.engineer, "development")
    ci = api(demo.engineer)
    first = ci.post(f"/api/v1/changes/{change.pk}/deploy", HTTP_IDEMPOTENCY_KEY="d-1")
    again = ci.post(f"/api/v1/changes/{change.pk}/deploy", HTTP_IDEMPOTENCY_KEY="d-1")
    assert first.status_code == again.status_code == 202, first.json()
    assert again.json() == first.json()
    assert Deployment.objects.count() == 1


def test_the_same_key_with_a_different_body_is_422(demo, api):
    ci = api(demo.engineer)
    ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    misuse = ci.post("/api/v1/releases/", {**RELEASE, "version": "4.0.1"}, format="json",
                     HTTP_IDEMPOTENCY_KEY="k-2")
    assert misuse.status_code == 422
    assert misuse.json()["code"] == "idempotency_key_reused"
    # A key names a request to one resource: sent elsewhere it is another request.
    elsewhere = ci.post("/api/v1/changes/", {"release": 1, "environment": "staging"},
                        format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert elsewhere.status_code != 422 and "Idempotent-Replayed" not in elsewhere
    assert not Release.objects.filter(version="4.0.1").exists()


def test_a_retry_while_the_first_is_still_running_is_409(demo, api):
    ci = api(demo.engineer)
    IdempotencyKey.objects.create(
        user=demo.engineer, key="k-3", method="POST", path="/api/v1/releases/",
        request_hash=fingerprint("POST", "/api/v1/releases/", RELEASE))
    busy = ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="k-3")
    assert busy.status_code == 409
    assert busy.json()["code"] == "idempotency_in_flight"
    assert not Release.objects.filter(version="4.0.0").exists()


def test_a_claim_abandoned_by_a_dead_request_is_taken_over(demo, api):
    IdempotencyKey.objects.create(
        user=demo.engineer, key="k-4", method="POST", path="/api/v1/releases/",
        request_hash=fingerprint("POST", "/api/v1/releases/", RELEASE),
        created_at=timezone.now() - timedelta(hours=1))
    answer = api(demo.engineer).post("/api/v1/releases/", RELEASE, format="json",
                                     HTTP_IDEMPOTENCY_KEY="k-4")
    assert answer.status_code == 201


def test_keys_are_scoped_per_client(demo, api):
    body = {"release": ReleaseFactory().pk, "environment": "staging"}
    mine = api(demo.engineer).post("/api/v1/changes/", body, format="json",
                                   HTTP_IDEMPOTENCY_KEY="shared")
    theirs = api(demo.techlead).post("/api/v1/changes/", body, format="json",
                                     HTTP_IDEMPOTENCY_KEY="shared")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["requested_by"] == "techlead"


def test_keys_expire_after_the_retention_period(demo, api):
    ci = api(demo.engineer)
    body = {"release": ReleaseFactory().pk, "environment": "staging"}
    first = ci.post("/api/v1/changes/", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyKey.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(hours=25))
    later = ci.post("/api/v1/changes/", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(days=2))
    assert idempotency_keys_purge() == 1
    assert not IdempotencyKey.objects.exists()


def test_beat_purges_expired_keys_hourly(demo, api, settings):
    from core.tasks import idempotency_keys_purge as beat_task

    entry = settings.CELERY_BEAT_SCHEDULE["idempotency-keys-purge"]
    assert entry == {"task": beat_task.name, "schedule": 3600.0}
    ci = api(demo.engineer)
    ci.post("/api/v1/changes/", {"release": ReleaseFactory().pk, "environment": "staging"},
            format="json", HTTP_IDEMPOTENCY_KEY="expired")
    ci.post("/api/v1/changes/", {"release": ReleaseFactory().pk, "environment": "staging"},
            format="json", HTTP_IDEMPOTENCY_KEY="fresh")
    IdempotencyKey.objects.filter(key="expired").update(
        created_at=timezone.now() - timedelta(days=2))
    beat_task()
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]


def test_a_refused_request_frees_its_key_for_the_corrected_one(demo, api):
    ci = api(demo.engineer)
    bad = {"application": "storefront", "version": "not-semver"}
    first = ci.post("/api/v1/releases/", bad, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    again = ci.post("/api/v1/releases/", bad, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert first.status_code == again.status_code == 400
    assert "Idempotent-Replayed" not in again
    fixed = ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert fixed.status_code == 201
    replay = ci.post("/api/v1/releases/", RELEASE, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert replay.json() == fixed.json() and replay["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("key", ["", " ", "x" * 256])
def test_a_malformed_key_is_400(demo, api, key):
    answer = api(demo.engineer).post("/api/v1/releases/", RELEASE, format="json",
                                     HTTP_IDEMPOTENCY_KEY=key)
    assert answer.status_code == 400
    assert "Idempotency-Key" in answer.json()["fields"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_with_one_key_create_exactly_one_change(demo, api):
    release = ReleaseFactory()
    clients = [api(demo.engineer) for _ in range(4)]
    body = {"release": release.pk, "environment": "staging"}
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def post(client):
        try:
            barrier.wait(timeout=10)
            answer = client.post("/api/v1/changes/", body, format="json",
                                 HTTP_IDEMPOTENCY_KEY="race-1")
            statuses.append(answer.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(statuses) == 4
    assert set(statuses) <= {201, 409} and 201 in statuses
    assert ChangeRequest.objects.filter(release=release).count() == 1
