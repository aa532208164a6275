"""``GET /api/v1/deployments/`` builds its rows from values() (deployments/api_rows.py):
the body must be exactly what ``DeploymentSerializer`` wrote for the same rows, for every
kind of deployment and state, with the filters and the cursor pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.renderers import JSONRenderer

from catalog.models import Application, Environment, Release, Target
from deployments.api import DEPLOYMENT_PREFETCH, DeploymentSerializer
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep

T0 = datetime(2025, 3, 4, 9, 30, 15, 123456, tzinfo=UTC)


def _deployment(app, env, version, *, minutes, status, kind="deploy", steps=(), **fields):
    release, _ = Release.objects.get_or_create(
        application=app, version=version,
        defaults={"created_by_id": fields.pop("by"), "committed_at": T0})
    started = T0 + timedelta(minutes=minutes) if status not in ("queued",) else None
    finished = (started + timedelta(seconds=95.5)
                if status in ("succeeded", "failed", "rolled_back", "cancelled") else None)
    deployment = Deployment.objects.create(
        application=app, environment=env, release=release, kind=kind, status=status,
        created_at=T0 + timedelta(minutes=minutes - 1), started_at=started,
        finished_at=finished, **fields)
    for position, (step_status, target) in enumerate(steps, start=1):
        DeploymentStep.objects.create(
            deployment=deployment, position=position, name=f"step-{position}",
            title=f"Step {position} é", target=target, status=step_status, attempts=position,
            phase="canary" if target else "", started_at=started,
            finished_at=finished if step_status != "running" else None,
            detail="" if step_status == "succeeded" else "exit 1 \u2014 see log")
    return deployment


@pytest.fixture
def every_kind(demo):
    """Deployments in every state and kind, with steps on targets and without, health
    verdicts, a change, a dry run, a queue."""
    by = demo.engineer.pk
    shop = Application.objects.get(slug="storefront")
    billing, _ = Application.objects.get_or_create(slug="billing", defaults={"name": "Billing"})
    staging = Environment.objects.get(slug="staging")
    prod = Environment.objects.get(slug="production")
    web1 = Target.objects.create(application=shop, environment=staging, name="web-1")
    ok = _deployment(shop, staging, "1.0.0", minutes=0, status="succeeded", by=by,
                     steps=[("succeeded", web1), ("succeeded", None)], progress=100,
                     change_id=4242, strategy="rolling")
    bad = _deployment(shop, staging, "1.1.0", minutes=10, status="failed", by=by,
                      steps=[("succeeded", web1), ("failed", None)], progress=50,
                      failure_reason="health check failed")
    AnalysisVerdict.objects.create(deployment=bad, phase="canary", provider="http",
                                   outcome="failed", action="rollback",
                                   figures={"error_rate": 0.125, "p95_ms": 812, "ok": None},
                                   reasons=["error rate 12.5% over 5%"])
    AnalysisVerdict.objects.create(deployment=bad, phase="baseline", provider="prometheus",
                                   outcome="baseline", dry_run=True, figures={}, reasons=[])
    back = _deployment(shop, staging, "1.2.0", minutes=20, status="rolled_back", by=by,
                       steps=[("succeeded", None)], failure_reason="rolled back by oncall")
    _deployment(shop, staging, "1.0.0", minutes=21, status="succeeded", by=by,
                kind="rollback", rolled_back_deployment=back, steps=[("succeeded", None)])
    _deployment(billing, staging, "0.1.0", minutes=30, status="cancelled", by=by,
                steps=[("skipped", None)])
    _deployment(billing, prod, "0.1.0", minutes=40, status="succeeded", by=by, dry_run=True,
                strategy="blue_green")
    _deployment(shop, prod, "1.0.0", minutes=50, status="running", by=by,
                steps=[("running", None), ("pending", None)], progress=30)
    _deployment(shop, prod, "1.1.0", minutes=51, status="queued", by=by, holds_target=False)
    _deployment(shop, prod, "1.2.0", minutes=52, status="queued", by=by, holds_target=False)
    _deployment(billing, staging, "0.2.0", minutes=60, status="needs_attention", by=by,
                steps=[("failed", None)])
    return ok


def serializer_body(queryset) -> list[dict]:
    """What the list wrote before: DeploymentSerializer over model instances."""
    rows = queryset.prefetch_related(*DEPLOYMENT_PREFETCH).order_by("-id")
    return json.loads(JSONRenderer().render(DeploymentSerializer(rows, many=True).data))


def listed(client, url: str) -> list[dict]:
    found = []
    while url:
        answer = client.get(url)
        assert answer.status_code == 200, answer.content
        body = json.loads(answer.content)
        found += body["results"]
        url = body["next"]
    return found


@pytest.mark.parametrize("query", [
    "", "?environment=staging", "?status=failed", "?application=billing",
    "?status=queued", "?since=2025-03-04T09:45:00Z", "?page_size=2"])
def test_the_list_body_equals_the_serializers(every_kind, demo, api, query):
    expected = Deployment.objects.all()
    params = dict(part.split("=") for part in query.lstrip("?").split("&") if part)
    if "environment" in params:
        expected = expected.filter(environment__slug=params["environment"])
    if "status" in params:
        expected = expected.filter(status=params["status"])
    if "application" in params:
        expected = expected.filter(application__slug=params["application"])
    if "since" in params:
        expected = expected.filter(created_at__gte=T0 + timedelta(minutes=14, seconds=45))
    want = serializer_body(expected)
    assert want  # the case has rows to compare
    got = listed(api(demo.auditor), f"/api/v1/deployments/{query}")
    assert got == want
    # Same bytes for each row, not only equal values (key order included).
    assert [list(row) for row in got] == [list(row) for row in want]


def test_queued_rows_say_where_they_wait(every_kind, demo, api):
    rows = {(r["status"], r["version"], r["environment"]): r
            for r in listed(api(demo.auditor), "/api/v1/deployments/")}
    running = rows[("running", "1.0.0", "production")]
    assert rows[("queued", "1.1.0", "production")]["queue_position"] == 1
    assert rows[("queued", "1.2.0", "production")]["queue_position"] == 2
    assert rows[("queued", "1.2.0", "production")]["waiting_for"] == running["id"]
    assert rows[("succeeded", "1.0.0", "staging")]["steps"][0]["target"] == "web-1"
    assert rows[("succeeded", "1.0.0", "staging")]["duration_seconds"] == 95.5


def test_someone_sees_only_their_environments(every_kind, demo, api):
    got = listed(api(demo.engineer), "/api/v1/deployments/")
    from deployments import selectors

    assert got == serializer_body(selectors.deployments_visible_to(demo.engineer))
