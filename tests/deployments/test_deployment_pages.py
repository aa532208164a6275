"""The deployment page: per-target progress, verdicts with figures, rollback and cancel."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from catalog.models import Release, Target
from deployments import services
from deployments.models import AnalysisVerdict, Deployment
from tests.conftest import PASSWORD, sign_in_with_second_factor

pytestmark = pytest.mark.django_db


def _deploy(demo, app, version, status="succeeded"):
    release = Release.objects.create(application=app, version=version,
                                     created_by=demo.engineer)
    with transaction.atomic():
        d = services.deployment_create(actor=demo.oncall, release=release,
                                       environment=app.targets.first().environment,
                                       strategy="canary")
    Deployment.objects.filter(pk=d.pk).update(status=status, started_at=timezone.now(),
                                              finished_at=timezone.now())
    d.refresh_from_db()
    return d


@pytest.fixture
def shop(demo):
    from catalog.models import Application, Environment

    app = Application.objects.create(slug="shop", name="Shop",
                                     executor_settings={"fleet": "demo"})
    env = Environment.objects.get(slug="production")
    for i in range(1, 5):
        Target.objects.create(application=app, environment=env, name=f"web-{i}")
    return app


def _verdict(deployment, outcome="failed"):
    return AnalysisVerdict.objects.create(
        deployment=deployment, phase="canary 5%", outcome=outcome, action="rolled_back",
        figures={"canary": {"targets": ["web-1"], "error_rate": 35.0, "p95_ms": 3.1,
                            "health_failures": []},
                 "baseline": {"targets": ["web-2"], "error_rate": 0.0, "p95_ms": 2.9},
                 "thresholds": {"error_rate_points": 1.0}},
        reasons=["error rate 35.0% is above 1.0% (baseline 0.0% + 1 point)"])


def test_page_shows_targets_and_verdicts_with_their_figures(client, demo, shop):
    _deploy(demo, shop, "1.0.0")
    deployment = _deploy(demo, shop, "1.1.0", status="rolled_back")
    _verdict(deployment)
    client.login(username="oncall", password=PASSWORD)

    page = client.get(f"/deployments/{deployment.pk}/").content.decode()

    for name in ("web-1", "web-2", "web-3", "web-4"):
        assert name in page
    assert "canary 5%" in page and "canary 50%" in page
    assert "35.0%" in page and "vs 0.0%" in page
    assert "error rate 35.0% is above 1.0%" in page
    fragment = client.get(f"/deployments/{deployment.pk}/engine")
    assert fragment.status_code == 200 and b"35.0%" in fragment.content


def test_rollback_button_only_for_those_allowed_and_refusal_is_explained(client, demo, shop):
    _deploy(demo, shop, "1.0.0")
    current = _deploy(demo, shop, "1.1.0")
    client.login(username="oncall", password=PASSWORD)
    assert b"Roll back</button>" in client.get(f"/deployments/{current.pk}/").content
    client.logout()
    client.login(username="cab", password=PASSWORD)  # sees production, may not roll back
    page = client.get(f"/deployments/{current.pk}/")
    assert page.status_code == 200 and b"Roll back</button>" not in page.content

    response = client.post(f"/deployments/{current.pk}/rollback", {"reason": "slow"},
                           follow=True)
    assert b"Not rolled back: you may not roll back in Production" in response.content
    assert not Deployment.objects.filter(rolled_back_deployment=current).exists()


def test_on_call_rolls_back_from_the_page(client, demo, shop):
    _deploy(demo, shop, "1.0.0")
    current = _deploy(demo, shop, "1.1.0")
    # Rolling back in Production asks for a fresh second factor (docs/identity.md).
    sign_in_with_second_factor(client, demo.oncall)

    response = client.post(f"/deployments/{current.pk}/rollback",
                           {"reason": "errors in checkout"})

    rollback = Deployment.objects.get(rolled_back_deployment=current)
    assert response.status_code == 302 and response.url == f"/deployments/{rollback.pk}/"
    assert rollback.release.version == "1.0.0" and rollback.kind == "rollback"
    page = client.get(response.url).content.decode()
    assert f"Rollback of <a href=\"/deployments/{current.pk}/\">deployment #{current.pk}" in page


def test_cancel_from_the_page(client, demo, shop):
    deployment = _deploy(demo, shop, "1.0.0", status="running")
    client.login(username="oncall", password=PASSWORD)
    client.post(f"/deployments/{deployment.pk}/cancel")
    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert client.get(f"/deployments/{deployment.pk}/rollback").status_code == 405


def test_outsider_and_anonymous_get_nothing(client, demo, shop):
    deployment = _deploy(demo, shop, "1.0.0")
    assert client.post(f"/deployments/{deployment.pk}/rollback",
                       {"reason": "x"}).status_code == 302  # to the login page
    client.force_login(demo.outsider)
    assert client.get(f"/deployments/{deployment.pk}/engine").status_code == 404
    assert client.post(f"/deployments/{deployment.pk}/rollback",
                       {"reason": "x"}).status_code == 404


def test_page_keeps_a_constant_number_of_queries_as_verdicts_grow(client, demo, shop):
    deployment = _deploy(demo, shop, "1.0.0", status="running")
    client.login(username="oncall", password=PASSWORD)
    _verdict(deployment)
    client.get(f"/deployments/{deployment.pk}/")
    with CaptureQueriesContext(connection) as few:
        client.get(f"/deployments/{deployment.pk}/")
    for _ in range(5):
        _verdict(deployment)
    with CaptureQueriesContext(connection) as many:
        client.get(f"/deployments/{deployment.pk}/")
    assert len(many) == len(few)
