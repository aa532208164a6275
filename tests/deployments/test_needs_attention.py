"""An interrupted step that is not safe to repeat stops the deployment for on-call.

No worker here: the test transaction never commits, so nothing is queued; the run
is called directly, as a worker picking up the dead run would.
"""

import pytest

from audit.models import AuditEvent
from core.errors import InvalidTransition, Refused
from deployments import services
from deployments.models import Deployment, DeploymentStep

pytestmark = pytest.mark.django_db


def _interrupted(fleet, **app_settings):
    shop = fleet(targets=1, **app_settings)
    shop.app.executor = "command"
    shop.app.executor_settings = {"commands": {"deploy": "true", "start": "true"},
                                  **app_settings}
    shop.app.save()
    deployment = shop.start("1.0.0")
    step = deployment.steps.order_by("position").first()
    DeploymentStep.objects.filter(pk=step.pk).update(status="running", attempts=1)
    Deployment.objects.filter(pk=deployment.pk).update(status="running", attempts=1)
    return shop, deployment, step


def test_an_interrupted_step_not_safe_to_repeat_waits_for_on_call(fleet, demo):
    shop, deployment, step = _interrupted(fleet)

    assert services.deployment_run(deployment_id=deployment.pk) == "needs_attention"

    deployment.refresh_from_db()
    step.refresh_from_db()
    assert deployment.status == "needs_attention"
    assert "is not safe to repeat" in deployment.failure_reason
    assert step.status == "running" and step.attempts == 1  # not run again
    assert deployment.log_lines.filter(message__startswith="Needs attention:").exists()
    assert AuditEvent.objects.filter(action="deployment.needs_attention",
                                     object_id=str(deployment.pk)).exists()
    # The sweep leaves it alone: it is neither queued nor running.
    assert services.deployments_resume_stale(on_worker_start=True) == 0
    # Nothing else deploys there until on-call has decided: a new one waits in the queue.
    queued = shop.start("1.0.1")
    assert queued.status == "queued" and not queued.holds_target
    assert services.deployment_run(deployment_id=queued.pk) is None
    assert Deployment.objects.get(pk=queued.pk).status == "queued"
    assert Deployment.objects.get(pk=deployment.pk).status == "needs_attention"


def test_an_executor_setting_can_declare_steps_safe_to_repeat(fleet, demo):
    shop, deployment, step = _interrupted(fleet, safe_to_repeat=[
        "pre_health_check", "deploy", "start", "health_check", "finalize", "stop", "backup"])
    assert services.deployment_run(deployment_id=deployment.pk) == "succeeded"
    step.refresh_from_db()
    assert step.status == "succeeded" and step.attempts == 2


def test_on_call_retries_the_step_and_the_run_goes_on(fleet, demo):
    shop, deployment, step = _interrupted(fleet)
    services.deployment_run(deployment_id=deployment.pk)

    services.deployment_retry_step(actor=demo.oncall, deployment=deployment,
                                   reason="checked web-1, nothing changed")
    deployment.refresh_from_db()
    step.refresh_from_db()
    assert deployment.status == "running" and step.status == "pending"
    event = AuditEvent.objects.get(action="deployment.step_retried",
                                   object_id=str(deployment.pk))
    assert event.actor_name == "oncall" and event.reason == "checked web-1, nothing changed"

    assert services.deployment_run(deployment_id=deployment.pk) == "succeeded"
    step.refresh_from_db()
    assert step.status == "succeeded" and step.attempts == 2


def test_on_call_marks_the_step_done_and_the_rest_runs(fleet, demo):
    shop, deployment, step = _interrupted(fleet)
    services.deployment_run(deployment_id=deployment.pk)

    services.deployment_mark_step_done(actor=demo.oncall, deployment=deployment,
                                       reason="web-1 already answers 1.0.0")
    step.refresh_from_db()
    assert step.status == "succeeded" and "marked done by oncall" in step.detail
    assert services.deployment_run(deployment_id=deployment.pk) == "succeeded"
    step.refresh_from_db()
    assert step.attempts == 1  # never run again


def test_without_deploy_permission_nothing_changes(fleet, demo, api):
    shop, deployment, step = _interrupted(fleet)
    services.deployment_run(deployment_id=deployment.pk)
    engineer = api(demo.engineer)
    events = AuditEvent.objects.count()

    with pytest.raises(Refused):
        services.deployment_retry_step(actor=demo.engineer, deployment=deployment)
    answer = engineer.post(f"/api/v1/deployments/{deployment.pk}/mark-step-done",
                                     {"reason": "trust me"}, format="json")
    assert answer.status_code in (403, 404)

    deployment.refresh_from_db()
    step.refresh_from_db()
    assert deployment.status == "needs_attention" and step.status == "running"
    assert AuditEvent.objects.count() == events


def test_decisions_are_refused_unless_the_deployment_needs_attention(fleet, demo, api):
    shop = fleet(targets=1)
    deployment = shop.start("1.0.0")
    with pytest.raises(InvalidTransition):
        services.deployment_retry_step(actor=demo.oncall, deployment=deployment)
    answer = api(demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/retry-step", {},
                                   format="json")
    assert answer.status_code == 409 and answer.json()["code"] == "not_needs_attention"
    answer = api(demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/mark-step-done",
                                   {"reason": ""}, format="json")
    assert answer.status_code == 400
    deployment.refresh_from_db()
    assert deployment.status == "queued"


def test_api_retry_by_on_call_is_accepted(fleet, demo, api):
    shop, deployment, step = _interrupted(fleet)
    services.deployment_run(deployment_id=deployment.pk)
    answer = api(demo.oncall).post(f"/api/v1/deployments/{deployment.pk}/retry-step",
                                   {"reason": "checked"}, format="json")
    assert answer.status_code == 202, answer.content
    assert answer.json()["status"] == "running"


def test_the_deployment_page_offers_the_decisions_to_on_call_only(fleet, demo, client):
    shop, deployment, step = _interrupted(fleet)
    services.deployment_run(deployment_id=deployment.pk)
    client.force_login(demo.oncall)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "Retry the step" in page and "Mark the step done" in page
    client.force_login(demo.engineer)
    page = client.get(f"/deployments/{deployment.pk}/")
    assert page.status_code == 404 or "Retry the step" not in page.content.decode()
    response = client.post(f"/deployments/{deployment.pk}/retry-step", {"reason": "x"})
    assert response.status_code in (302, 404)
    deployment.refresh_from_db()
    assert deployment.status == "needs_attention"
