"""GET /metrics: who may scrape it, and what Prometheus reads there."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from approvals import services as approval_services
from approvals.models import Approval, ChangeRequest
from catalog.models import Application, Environment
from deployments import services as deployment_services
from deployments.models import Deployment, DeploymentStep
from reporting import prometheus
from tests.factories import request_change
from tests.reporting.conftest import make_deployment

TOKEN = "scrape-token-for-the-tests-6Qm2"


@pytest.fixture
def token(settings):
    settings.PORTAL_METRICS_TOKEN = TOKEN
    settings.PORTAL_METRICS_ALLOW = []
    return TOKEN


def samples(client) -> dict[tuple, float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples}


def value(scraped, name, **labels):
    return scraped.get((name, tuple(sorted(labels.items()))))


def bucket(scraped, name, le, **labels):
    return value(scraped, f"{name}_bucket", le=le, **labels)


def test_metrics_are_refused_without_the_token_and_served_with_it(client, db, token):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong-token-of-some-length"},
                    {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
                    {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"}):
        refused = client.get("/metrics", **headers)
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"portal_" not in refused.content
    served = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert served.status_code == 200
    assert b"# TYPE portal_deployments gauge" in served.content
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_metrics_are_refused_outside_the_allowed_networks(client, db, settings):
    import ipaddress

    settings.PORTAL_METRICS_TOKEN = ""
    settings.PORTAL_METRICS_ALLOW = [ipaddress.ip_network("10.0.0.0/8"),
                                     ipaddress.ip_network("2001:db8::/32")]
    outside = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert outside.status_code == 403
    assert b"portal_" not in outside.content
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::5").status_code == 200

    # Both set: both must pass.
    settings.PORTAL_METRICS_TOKEN = TOKEN
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7",
                      HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_without_token_or_networks_production_has_no_metrics_endpoint(client, db, settings):
    settings.PORTAL_METRICS_TOKEN = ""
    settings.PORTAL_METRICS_ALLOW = []
    settings.DEBUG = False
    hidden = client.get("/metrics")
    assert hidden.status_code == 404
    assert b"portal_" not in hidden.content
    # In development (DEBUG) only this machine may read them.
    settings.DEBUG = True
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403


def test_a_deployment_shows_in_the_gauges_and_the_timing_histograms(client, demo, token):
    change = request_change(demo.engineer, "staging")
    approval_services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approval_services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    deployment = approval_services.change_request_deploy(actor=demo.engineer, change=change)
    deployment_services.deployment_run(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == "succeeded"

    # Known times: submitted 2 h ago, last approval 1 h ago (request to approval 3600 s),
    # deployment created 50 min ago, started 40 min ago (approval to start 1200 s), its
    # first step 2 s after creation (dispatch 2 s).
    now = timezone.now()
    ChangeRequest.objects.filter(pk=change.pk).update(submitted_at=now - timedelta(hours=2))
    Approval.objects.filter(change=change, approver=demo.techlead).update(
        decided_at=now - timedelta(minutes=90))
    Approval.objects.filter(change=change, approver=demo.qa).update(
        decided_at=now - timedelta(hours=1))
    created = now - timedelta(minutes=50)
    Deployment.objects.filter(pk=deployment.pk).update(
        created_at=created, started_at=now - timedelta(minutes=40))
    steps = DeploymentStep.objects.filter(deployment=deployment).order_by("position")
    DeploymentStep.objects.filter(pk=steps[0].pk).update(started_at=created + timedelta(seconds=2))
    DeploymentStep.objects.filter(pk__in=[s.pk for s in steps[1:]]).update(
        started_at=created + timedelta(seconds=30))

    # An approval older than the window (168 h) counts nowhere.
    old = request_change(demo.engineer, "staging")
    approval_services.gate_approve(actor=demo.techlead, change=old, role="tech_lead")
    approval_services.gate_approve(actor=demo.qa, change=old, role="qa")
    Approval.objects.filter(change=old).update(decided_at=now - timedelta(days=10))
    ChangeRequest.objects.filter(pk=old.pk).update(submitted_at=now - timedelta(days=11))
    # A failed production deployment, made by hand, with no change behind it.
    make_deployment(Application.objects.get(slug="storefront"),
                    Environment.objects.get(slug="production"), version="9.9.9",
                    committed=now - timedelta(days=1), finished=now - timedelta(hours=3),
                    status="failed", failed_step=True)

    scraped = samples(client)

    assert value(scraped, "portal_deployments", environment="staging", status="succeeded") == 1
    assert value(scraped, "portal_deployments", environment="staging", status="failed") == 0
    assert value(scraped, "portal_deployments", environment="production", status="failed") == 1
    assert value(scraped, "portal_deployments", environment="production",
                 status="succeeded") == 0
    assert value(scraped, "portal_deployments", environment="development", status="queued") == 0

    name = "portal_change_request_to_approval_seconds"
    assert value(scraped, f"{name}_count", environment="staging") == 1
    assert value(scraped, f"{name}_sum", environment="staging") == pytest.approx(3600, abs=1)
    assert bucket(scraped, name, "1800.0", environment="staging") == 0
    assert bucket(scraped, name, "3600.0", environment="staging") == 1
    assert bucket(scraped, name, "+Inf", environment="staging") == 1

    name = "portal_change_approval_to_deployment_start_seconds"
    assert value(scraped, f"{name}_count", environment="staging") == 1
    assert value(scraped, f"{name}_sum", environment="staging") == pytest.approx(1200, abs=1)
    assert bucket(scraped, name, "900.0", environment="staging") == 0
    assert bucket(scraped, name, "1800.0", environment="staging") == 1

    name = "portal_deployment_dispatch_seconds"
    assert value(scraped, f"{name}_sum", environment="staging") == pytest.approx(2, abs=0.01)
    assert bucket(scraped, name, "1.0", environment="staging") == 0
    assert bucket(scraped, name, "2.5", environment="staging") == 1
    # The hand-made production run: created at its end, its step never started.
    assert value(scraped, f"{name}_count", environment="production") is None

    assert value(scraped, "portal_metrics_window_seconds") == 168 * 3600
    # The services above wrote audit events a moment ago.
    assert 0 <= value(scraped, "portal_audit_newest_event_age_seconds") < 60

    # Every metric the example Grafana dashboard charts is served.
    dashboard = (Path(__file__).resolve().parents[2] / "docs" / "grafana"
                 / "portal-dashboard.json").read_text()
    charted = set(re.findall(r"portal_[a-z_]+", dashboard)) - {"portal_metrics_window_seconds"}
    client.get("/healthz")
    served = {name for name, _ in samples(client)}
    assert charted and charted <= served, charted - served


def test_a_page_hit_is_timed_under_its_route_name_not_its_path(client, demo, token):
    def count(scraped, view, status):
        return value(scraped, "portal_http_request_duration_seconds_count",
                     view=view, method="GET", status=status) or 0

    before = samples(client)
    assert client.get("/healthz").status_code == 200
    client.force_login(demo.engineer)
    assert client.get("/changes/987654/").status_code == 404
    assert client.get("/no/such/page/").status_code == 404
    after = samples(client)

    assert count(after, "healthz", "2xx") == count(before, "healthz", "2xx") + 1
    assert count(after, "change-detail", "4xx") == count(before, "change-detail", "4xx") + 1
    assert count(after, "unresolved", "4xx") == count(before, "unresolved", "4xx") + 1
    assert value(after, "portal_http_request_duration_seconds_bucket", view="healthz",
                 method="GET", status="2xx", le="+Inf") >= 1
    views = {dict(labels).get("view") for (_, labels) in after}
    assert not any(v and "/" in v for v in views), views


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    queues = ["deploy.metrics-test-a", "deploy.metrics-test-b",
              f"deploy.metrics-test-b{prometheus.KOMBU_SEP}6"]
    client.delete(*queues)
    yield client
    client.delete(*queues)


def test_queue_lengths_are_read_from_redis_for_celery_and_every_deploy_queue(
        client, db, token, redis_client):
    redis_client.rpush("deploy.metrics-test-a", "m1", "m2")
    redis_client.rpush("deploy.metrics-test-b", "m1")
    redis_client.rpush(f"deploy.metrics-test-b{prometheus.KOMBU_SEP}6", "m2", "m3")
    scraped = samples(client)
    assert value(scraped, "portal_broker_up") == 1
    assert value(scraped, "portal_celery_queue_length", queue="deploy.metrics-test-a") == 2
    assert value(scraped, "portal_celery_queue_length", queue="deploy.metrics-test-b") == 3
    assert value(scraped, "portal_celery_queue_length",
                 queue="celery") == redis_client.llen("celery")

    redis_client.delete("deploy.metrics-test-a")
    assert value(samples(client), "portal_celery_queue_length",
                 queue="deploy.metrics-test-a") is None


def test_a_broker_outage_is_reported_not_a_failed_scrape(client, demo, token):
    # The broker is away for the scrape only (nothing listens on port 1): the test's
    # own worker and its clean-up keep the real one.
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        scraped = samples(client)
    assert value(scraped, "portal_broker_up") == 0
    assert not any(name == "portal_celery_queue_length" for name, _ in scraped)
    # The database figures are there all the same.
    assert ("portal_deployments", (("environment", "staging"), ("status", "queued"))) in scraped


def test_a_scrape_runs_the_same_few_queries_however_many_rows(client, demo, token):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
        return len(captured)

    few = queries()
    now = timezone.now()
    for i, env in enumerate(("development", "staging", "production") * 3):
        make_deployment(Application.objects.get(slug="storefront"),
                        Environment.objects.get(slug=env), version=f"7.{i}.0",
                        committed=now - timedelta(days=2), finished=now - timedelta(hours=i),
                        status=("succeeded", "failed", "rolled_back")[i % 3])
    for _ in range(3):
        change = request_change(demo.engineer, "staging")
        approval_services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
        approval_services.gate_approve(actor=demo.qa, change=change, role="qa")
    many = queries()
    assert few == many == prometheus.SCRAPE_QUERIES
