"""A real Celery worker on the embedded Redis runs approved deployments with the local executor."""

import hashlib
import os
from pathlib import Path

import pytest
from django.conf import settings

from approvals import services
from approvals.models import ChangeRequest
from audit.models import AuditEvent
from deployments.models import Deployment
from tests.conftest import wait_for
from tests.factories import ReleaseFactory, request_change

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def approved_staging_change(demo, **release_fields):
    release_fields.setdefault("checks", {"tests": {"status": "passed"},
                                         "security_scan": {"status": "passed"}})
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(**release_fields))
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    return change


def final_status(deployment_id):
    status = Deployment.objects.values_list("status", flat=True).get(pk=deployment_id)
    return status if status in Deployment.FINAL else None


def test_worker_runs_deployment_to_success_and_switches_current_symlink(
        demo, celery_worker_process):
    change = approved_staging_change(demo)
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)

    assert wait_for(lambda: final_status(deployment.pk), timeout=60) == "succeeded"

    base = Path(settings.PORTAL_DEPLOY_ROOT) / "storefront" / "staging"
    version = change.release.version
    assert os.readlink(base / "current") == f"releases/{version}"
    assert (base / "current" / "VERSION").read_text().strip() == version
    assert (base / "state").read_text().strip() == "running"

    deployment.refresh_from_db()
    assert deployment.progress == 100
    assert {s.status for s in deployment.steps.all()} == {"succeeded"}
    messages = list(deployment.log_lines.values_list("message", flat=True))
    assert messages[-1] == "Deployment succeeded"
    assert any(f"current -> releases/{version}" in m for m in messages)

    # The change closes when the deployment ends (deployment_finished signal).
    change = wait_for(lambda: ChangeRequest.objects.filter(
        pk=change.pk, status=ChangeRequest.Status.DEPLOYED).first())
    actions = set(AuditEvent.objects.filter(object_type="deployment",
                                            object_id=str(deployment.pk))
                  .values_list("action", "actor_kind"))
    assert {("deployment.queued", "user"), ("deployment.started", "system"),
            ("deployment.succeeded", "system")} <= actions


def test_artifact_with_wrong_checksum_fails_the_deployment_and_keeps_current(
        demo, celery_worker_process, tmp_path):
    artifact = tmp_path / "storefront.tar.gz"
    artifact.write_bytes(b"release bytes")
    wrong = hashlib.sha256(b"something else").hexdigest()

    good = approved_staging_change(demo)
    first = services.change_request_deploy(actor=demo.engineer, change=good)
    assert wait_for(lambda: final_status(first.pk), timeout=60) == "succeeded"

    bad = approved_staging_change(demo, artifact_url=f"file://{artifact}",
                                  artifact_sha256=wrong)
    deployment = services.change_request_deploy(actor=demo.engineer, change=bad)
    assert wait_for(lambda: final_status(deployment.pk), timeout=60) == "failed"

    deployment.refresh_from_db()
    assert "checksum mismatch" in deployment.failure_reason
    base = Path(settings.PORTAL_DEPLOY_ROOT) / "storefront" / "staging"
    # SOP 10.1: the unverified artifact never became current.
    assert os.readlink(base / "current") == f"releases/{good.release.version}"
    wait_for(lambda: ChangeRequest.objects.filter(pk=bad.pk, status="failed").exists())
