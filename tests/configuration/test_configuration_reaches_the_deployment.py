"""Configuration reaches the deployed process with its secrets resolved on the worker,
and the resolved values are written nowhere."""

import json
import sys

from django.db import connection

from audit.models import AuditEvent
from configuration.services import configuration_save
from deployments.models import DeploymentLogLine
from tests.factories import executor_app, run_deployment

SECRET = "s3cr3t-value-for-the-test"


def test_deployment_hands_resolved_configuration_to_the_process_and_stores_no_secret(
        demo, tmp_path, monkeypatch):
    monkeypatch.setenv("STAGING_SVC_COMMAND_DB_PASSWORD", SECRET)
    seen = tmp_path / "seen.json"
    app, env = executor_app("command", {"commands": {
        "deploy": f"{sys.executable} -c \"import os, pathlib; "
                  f"pathlib.Path('{seen}').write_text(os.environ['PORTAL_CONFIGURATION'])\""}})
    configuration_save(actor=demo.engineer, application=app, environment=env, reason="db",
                       document="database:\n  host: db.internal\n"
                                "  password: ${env:STAGING_SVC_COMMAND_DB_PASSWORD}\n")

    deployment = run_deployment(demo, app, env, "1.0.0")

    assert deployment.status == "succeeded", deployment.failure_reason
    assert json.loads(seen.read_text()) == {
        "database": {"host": "db.internal", "password": SECRET}}
    with connection.cursor() as cursor:
        cursor.execute("SELECT string_agg(message, ' ') FROM deployments_deploymentlogline")
        assert SECRET not in (cursor.fetchone()[0] or "")
    assert not DeploymentLogLine.objects.filter(message__contains=SECRET).exists()
    assert not [e for e in AuditEvent.objects.all() if SECRET in json.dumps(
        [e.before, e.after, e.reason])]


def test_a_missing_secret_fails_the_deployment_naming_only_the_reference(demo, monkeypatch):
    monkeypatch.delenv("STAGING_SVC_COMMAND_MISSING_TOKEN", raising=False)
    app, env = executor_app("command", {"commands": {"deploy": f"{sys.executable} -c 'pass'"}})
    configuration_save(actor=demo.engineer, application=app, environment=env, reason="api",
                       document="api:\n  token: ${env:STAGING_SVC_COMMAND_MISSING_TOKEN}\n")
    deployment = run_deployment(demo, app, env, "1.0.0")
    assert deployment.status == "failed"
    assert "${env:STAGING_SVC_COMMAND_MISSING_TOKEN}" in deployment.failure_reason
    assert "not set on the worker" in deployment.failure_reason
