"""Secrets stay in their environment (SOP 7.2, 10.2).

A configuration names only secrets on its application's allow-list in its own
environment, never another environment's nor the portal's own settings; the check runs
at save and again on the worker; deployed commands do not inherit the worker's
environment; resolved values are masked wherever a run writes text.
"""

from __future__ import annotations

import json
import sys

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from catalog.models import Application, Environment, Release, Target
from configuration import services
from configuration.models import ConfigurationVersion, SecretAllowance
from core.errors import Conflict, Invalid, Refused
from deployments import services as deployment_services
from deployments.models import Deployment, DeploymentLogLine, DeploymentStep
from tests.conftest import WORKER_TEST_ENV, wait_for


def storefront(environment: str) -> tuple[Application, Environment]:
    return Application.objects.get(slug="storefront"), Environment.objects.get(slug=environment)


def save(actor, environment: str, document: str):
    application, env = storefront(environment)
    return services.configuration_save(actor=actor, application=application,
                                       environment=env, document=document,
                                       reason="point at the database")


def audit_count(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


# --- refused at save time -------------------------------------------------------------


@pytest.mark.parametrize("reference", [
    "vault:secret/production/storefront#password",
    "vault:secret/production/payments/db#password",
    "${env:PRODUCTION_STOREFRONT_DB_PASSWORD}",
    "${env:DJANGO_SECRET_KEY}",
    "${env:PORTAL_HOOK_SECRET}",
    "${env:DATABASE_URL}",
    "${env:REDIS_URL}",
    "${env:VAULT_TOKEN}",
])
def test_a_development_configuration_naming_a_production_or_portal_secret_is_refused(
        demo, reference):
    admin = demo.admin
    application, development = storefront("development")
    # Even a broad entry an administrator added does not open them: the deny-list wins.
    services.secret_allowance_add(actor=admin, application=application,
                                  environment=development, kind="vault", value="secret/")
    for prefix in ("D*", "P*", "R*", "V*"):
        services.secret_allowance_add(actor=admin, application=application,
                                      environment=development, kind="env", value=prefix)
    save(demo.engineer, "development", "app:\n  workers: 2\n")
    versions = ConfigurationVersion.objects.count()
    refusals = audit_count("configuration.secret_refused")

    with pytest.raises(Invalid) as caught:
        save(demo.engineer, "development",
             f"app:\n  workers: 4\ndatabase:\n  host: db\n  password: {reference}\n")

    assert caught.value.status == 400
    assert caught.value.code == "secret_not_allowed"
    [problem] = caught.value.fields["document"]
    assert problem.startswith("line 5: database.password: ")
    assert reference in problem
    assert "production" in problem or "portal itself" in problem
    # Nothing saved: no new version, the current one is unchanged.
    assert ConfigurationVersion.objects.count() == versions
    assert ConfigurationVersion.objects.filter(
        application=application, environment=development).get().data == {"app": {"workers": 2}}
    # The refusal is on the record, naming the line, never a value.
    assert audit_count("configuration.secret_refused") == refusals + 1
    event = AuditEvent.objects.filter(action="configuration.secret_refused").last()
    assert event.environment == "development"
    assert event.after["refused"] == ["line 5: database.password"]


def test_a_name_outside_the_allow_list_is_refused_until_an_administrator_allows_it(demo):
    application, development = storefront("development")
    document = "payments:\n  api_token: ${env:SHARED_PAYMENTS_API_TOKEN}\n"
    with pytest.raises(Invalid) as caught:
        save(demo.engineer, "development", document)
    assert caught.value.code == "secret_not_allowed"
    assert "not on the allow-list" in caught.value.fields["document"][0]
    assert "DEVELOPMENT_STOREFRONT_" in caught.value.fields["document"][0]
    assert not ConfigurationVersion.objects.filter(application=application).exists()

    # Its own namespace needs no entry; an entry opens one more name.
    save(demo.engineer, "development",
         "db:\n  password: vault:secret/development/storefront/db#password\n"
         "api:\n  token: ${env:DEVELOPMENT_STOREFRONT_API_TOKEN}\n")
    services.secret_allowance_add(actor=demo.admin, application=application,
                                  environment=development, kind="env",
                                  value="SHARED_PAYMENTS_API_TOKEN")
    version = save(demo.engineer, "development", document)
    assert version.secret_references == ["${env:SHARED_PAYMENTS_API_TOKEN}"]
    # The same entry twice is a conflict, and records nothing more.
    with pytest.raises(Conflict) as twice:
        services.secret_allowance_add(actor=demo.admin, application=application,
                                      environment=development, kind="env",
                                      value="SHARED_PAYMENTS_API_TOKEN")
    assert twice.value.code == "already_allowed"
    assert SecretAllowance.objects.count() == 1
    assert audit_count("configuration.secret_allowed") == 1


@pytest.mark.parametrize(("kind", "value"), [
    ("env", "DJANGO_SECRET_KEY"), ("env", "PORTAL_HOOK_*"), ("env", "DATABASE_URL"),
    ("env", "PRODUCTION_STOREFRONT_*"), ("vault", "secret/production/"),
    ("vault", "secret/production/storefront"),
])
def test_an_allow_list_entry_for_a_denied_name_is_refused(demo, kind, value):
    application, development = storefront("development")
    with pytest.raises(Invalid) as caught:
        services.secret_allowance_add(actor=demo.admin, application=application,
                                      environment=development, kind=kind, value=value)
    assert caught.value.code == "secret_denied"
    assert not SecretAllowance.objects.exists()
    assert audit_count("configuration.secret_allowed") == 0


def test_only_administrators_change_the_allow_list(demo):
    application, development = storefront("development")
    with pytest.raises(Refused):
        services.secret_allowance_add(actor=demo.engineer, application=application,
                                      environment=development, kind="env",
                                      value="SHARED_PAYMENTS_API_TOKEN")
    assert not SecretAllowance.objects.exists()


def test_the_configuration_page_shows_the_refusal_next_to_the_document_with_its_line(
        demo, client):
    client.force_login(demo.engineer)
    response = client.post("/configuration/storefront/development/", {
        "document": "app:\n  workers: 4\n  secret: ${env:DJANGO_SECRET_KEY}\n",
        "reason": "try the portal key"})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="id_document_error"' in page
    error = page.split('id="id_document_error"', 1)[1].split("</p>", 1)[0]
    assert "line 3: app.secret:" in error and "DJANGO_SECRET_KEY" in error
    assert "belongs to the portal itself" in error
    assert not ConfigurationVersion.objects.exists()


def test_the_admin_refuses_a_denied_entry_and_audits_the_ones_it_adds(demo, client):
    application, development = storefront("development")
    client.force_login(demo.admin)
    url = "/admin/configuration/secretallowance/add/"
    refused = client.post(url, {"application": application.pk,
                                "environment": development.pk, "kind": "env",
                                "value": "REDIS_URL"})
    assert refused.status_code == 200 and "belongs to the portal itself" in \
        refused.content.decode()
    assert not SecretAllowance.objects.exists()

    added = client.post(url, {"application": application.pk, "environment": development.pk,
                              "kind": "vault", "value": "secret/development/shared/"})
    assert added.status_code == 302
    entry = SecretAllowance.objects.get()
    assert (entry.kind, entry.value, entry.created_by) == (
        "vault", "secret/development/shared/", demo.admin)
    event = AuditEvent.objects.get(action="configuration.secret_allowed")
    assert event.actor_name == "admin" and event.after["value"] == "secret/development/shared/"


# --- on the worker ----------------------------------------------------------------------

PRINT_ENVIRONMENT = (f"{sys.executable} -c \"import os; "
                     "[print('env:' + k + '=' + v) for k, v in sorted(os.environ.items())]\"")
ECHO_TOKEN = (f"{sys.executable} -c \"import json, os; "
              "token = json.loads(os.environ['PORTAL_CONFIGURATION'])['api']['token']; "
              "print('token is', token); print('again:', token)\"")


def probe_app(commands: dict) -> tuple[Application, Environment]:
    """An application on the command executor in staging; its namespace holds the
    worker's STAGING_SECRET_PROBE_* variables."""
    staging = Environment.objects.get(slug="staging")
    app = Application.objects.create(slug="secret-probe", name="Secret probe",
                                     executor="command",
                                     executor_settings={"commands": commands})
    Target.objects.create(application=app, environment=staging, name="node-1")
    return app, staging


def deploy(demo, app, environment, version="1.0.0") -> Deployment:
    release = Release.objects.create(application=app, version=version,
                                     created_by=demo.engineer)
    with transaction.atomic():
        deployment = deployment_services.deployment_create(
            actor=demo.oncall, release=release, environment=environment)
    wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_final, timeout=60)
    deployment.refresh_from_db()
    return deployment


def nowhere_in_the_database(*values: str) -> None:
    """No table holds any of ``values``, in any column."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables "
                       "WHERE table_schema = 'public'")
        for (table,) in cursor.fetchall():
            for value in values:
                cursor.execute(f'SELECT count(*) FROM "{table}" WHERE "{table}"::text '
                               "LIKE %s", [f"%{value}%"])
                assert cursor.fetchone()[0] == 0, f"{table} holds a secret"


def worker_value(name: str) -> str:
    import os

    return os.environ.get(name, WORKER_TEST_ENV[name])


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_deployed_command_sees_no_portal_setting_and_its_secret_is_masked_in_the_log(
        demo, celery_worker_process, api):
    secret = worker_value("STAGING_SECRET_PROBE_API_TOKEN")
    app, staging = probe_app({"pre_health_check": PRINT_ENVIRONMENT, "deploy": ECHO_TOKEN})
    services.configuration_save(
        actor=demo.engineer, application=app, environment=staging, reason="api token",
        document="api:\n  url: https://api.internal\n"
                 "  token: ${env:STAGING_SECRET_PROBE_API_TOKEN}\n")

    deployment = deploy(demo, app, staging)

    assert deployment.status == "succeeded", deployment.failure_reason
    messages = list(deployment.log_lines.values_list("message", flat=True))
    seen = {m[4:].split("=", 1)[0] for m in messages if m.startswith("env:")}
    # The command ran with a minimal environment, not the worker's.
    assert "PATH" in seen and "PORTAL_CONFIGURATION" in seen
    for name in ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL",
                 "STAGING_SECRET_PROBE_API_TOKEN", "SHARED_PAYMENTS_API_TOKEN"):
        assert name not in seen
    assert not [m for m in messages if worker_value("DJANGO_SECRET_KEY") in m]
    # The configuration it was handed holds the secret, masked in the stored line.
    [handed] = [m for m in messages if m.startswith("env:PORTAL_CONFIGURATION=")]
    assert json.loads(handed.split("=", 1)[1])["api"] == {"url": "https://api.internal",
                                                          "token": "***"}
    # Streamed output that echoes the secret is stored masked.
    assert "token is ***" in messages and "again: ***" in messages
    assert not DeploymentLogLine.objects.filter(message__contains=secret).exists()
    deploy_step = deployment.steps.get(name="deploy")
    assert deploy_step.detail == "again: ***"
    # The API's log endpoint serves the masked lines.
    response = api(demo.oncall).get(f"/api/v1/deployments/{deployment.pk}/log")
    assert response.status_code == 200
    served = [line["message"] for line in response.json()]
    assert "token is ***" in served
    assert secret not in response.content.decode()
    # Nor is it anywhere else: steps, reasons, audit trail, notifications.
    nowhere_in_the_database(secret, worker_value("DJANGO_SECRET_KEY"))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_reference_whose_allow_list_entry_was_removed_does_not_resolve(
        demo, celery_worker_process, api):
    secret = worker_value("SHARED_PAYMENTS_API_TOKEN")
    app, staging = probe_app({"deploy": ECHO_TOKEN})
    entry = services.secret_allowance_add(actor=demo.admin, application=app,
                                          environment=staging, kind="env",
                                          value="SHARED_PAYMENTS_API_TOKEN")
    services.configuration_save(
        actor=demo.engineer, application=app, environment=staging, reason="shared token",
        document="api:\n  token: ${env:SHARED_PAYMENTS_API_TOKEN}\n")
    services.secret_allowance_remove(actor=demo.admin, allowance=entry)
    assert AuditEvent.objects.filter(action="configuration.secret_disallowed").exists()

    deployment = deploy(demo, app, staging)

    assert deployment.status == "failed"
    assert "${env:SHARED_PAYMENTS_API_TOKEN}" in deployment.failure_reason
    assert "not on the allow-list" in deployment.failure_reason
    # The command never ran: the secret was not read, let alone handed over.
    messages = list(deployment.log_lines.values_list("message", flat=True))
    assert not [m for m in messages if m.startswith("$ ") or "token is" in m]
    assert any("not on the allow-list" in m for m in messages)
    assert not DeploymentStep.objects.filter(deployment=deployment,
                                             status="succeeded").exists()
    response = api(demo.oncall).get(f"/api/v1/deployments/{deployment.pk}/log")
    assert secret not in response.content.decode()
    nowhere_in_the_database(secret)


def test_demo_services_get_their_configuration_but_not_the_workers_environment(
        tmp_path, monkeypatch):
    import psutil

    from demo_fleet import control

    monkeypatch.setenv("DJANGO_SECRET_KEY", "worker-only-key-123")
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:pw@db/portal")
    release = tmp_path / "releases" / "1.0.0"
    release.mkdir(parents=True)
    info = control.start_instance(tmp_path / "instance", release, "web-1",
                                  env={"PORTAL_CONFIGURATION": '{"timeout": 60}'})
    try:
        seen = psutil.Process(info["pid"]).environ()
    finally:
        control.stop_instance(tmp_path / "instance")
    assert seen["PORTAL_CONFIGURATION"] == '{"timeout": 60}'
    assert "DJANGO_SECRET_KEY" not in seen and "DATABASE_URL" not in seen
    assert "PATH" in seen
