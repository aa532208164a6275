"""Configuration (SOP 7.1, 7.2): versions, validation with lines, refusal of literal
secrets, references resolved only on the worker and never stored or logged."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection

from audit.models import AuditEvent
from catalog.models import Application, Environment
from configuration import selectors, services
from configuration.models import ConfigurationVersion
from configuration.references import SecretUnavailable
from core.errors import Conflict, Invalid, Refused
from deployments.models import Deployment
from tests.factories import ReleaseFactory, request_change

SOP_EXAMPLE = """\
database:
  host: prod-db.internal
  port: 5432
  name: app_production
  password: ${env:PRODUCTION_STOREFRONT_DB_PASSWORD}
api:
  base_url: https://api.company.com
  timeout: 60
  token: vault:secret/production/storefront#api_token
features:
  new_dashboard: false
  beta_features: false
"""

SCHEMA = {
    "type": "object",
    "required": ["database", "api"],
    "properties": {
        "database": {"type": "object", "required": ["host", "port"],
                     "properties": {"port": {"type": "integer", "maximum": 65535}}},
        "api": {"type": "object", "properties": {"timeout": {"type": "integer"}}},
    },
}


@pytest.fixture
def where(demo):
    return (Application.objects.get(slug="storefront"),
            Environment.objects.get(slug="production"))


def save(demo, where, document=SOP_EXAMPLE, reason="Raise the API timeout", actor=None):
    application, environment = where
    return services.configuration_save(actor=actor or demo.engineer, application=application,
                                       environment=environment, document=document,
                                       reason=reason)


def test_every_save_is_a_new_audited_version(demo, where):
    first = save(demo, where)
    second = save(demo, where, SOP_EXAMPLE.replace("timeout: 60", "timeout: 90"),
                  reason="Slow partner API")
    assert (first.number, second.number) == (1, 2)
    assert second.data["api"]["timeout"] == 90
    assert second.author == demo.engineer and second.reason == "Slow partner API"
    assert second.secret_references == ["${env:PRODUCTION_STOREFRONT_DB_PASSWORD}",
                                        "vault:secret/production/storefront#api_token"]
    event = AuditEvent.objects.filter(action="configuration.changed").order_by("-id").first()
    assert event.actor_name == "engineer" and event.reason == "Slow partner API"
    assert event.before["version"] == 1 and event.after["version"] == 2
    with pytest.raises(Conflict):
        save(demo, where, SOP_EXAMPLE.replace("timeout: 60", "timeout: 90"))


def test_saving_needs_a_reason_and_a_permission(demo, where):
    with pytest.raises(Invalid):
        save(demo, where, reason=" ")
    with pytest.raises(Refused):
        save(demo, where, actor=demo.outsider)


def test_yaml_errors_point_at_the_line(demo, where):
    with pytest.raises(Invalid) as caught:
        save(demo, where, "database:\n  host: a\n   port: 5432\n")
    [message] = caught.value.fields["document"]
    assert message.startswith("line 3") and "not valid YAML" in message


def test_schema_errors_point_at_the_line_of_the_key(demo, where):
    from configuration.models import ConfigurationSchema

    ConfigurationSchema.objects.create(application=where[0], schema=SCHEMA,
                                       updated_by=demo.admin)
    broken = SOP_EXAMPLE.replace("port: 5432", "port: 99999").replace("timeout: 60",
                                                                      "timeout: soon")
    with pytest.raises(Invalid) as caught:
        save(demo, where, broken)
    problems = caught.value.fields["document"]
    assert problems[0].startswith("line 3: database.port: 99999 is greater than")
    assert problems[1].startswith("line 8: api.timeout: 'soon' is not of type 'integer'")
    with pytest.raises(Invalid) as caught:
        save(demo, where, "features:\n  new_dashboard: true\n")
    assert "'database' is a required property" in caught.value.fields["document"][0]


@pytest.mark.parametrize("line", [
    "  password: hunter2", "  api_key: abc123", "  client_secret: s3cr3t", "  token: 12345",
])
def test_a_literal_secret_is_refused_with_a_clear_message(demo, where, line):
    document = f"database:\n  host: db\n{line}\n"
    with pytest.raises(Invalid) as caught:
        save(demo, where, document)
    [message] = caught.value.fields["document"]
    assert message.startswith("line 3: database.")
    assert "secrets are never stored" in message and "${env:NAME}" in message
    assert not ConfigurationVersion.objects.exists()
    assert "hunter2" not in json.dumps(list(AuditEvent.objects.values("before", "after")))


def test_a_malformed_reference_is_refused(demo, where):
    with pytest.raises(Invalid) as caught:
        save(demo, where, "database:\n  password: ${ENV:lower}\n")
    assert "looks like a secret reference" in caught.value.fields["document"][0]


def test_digests_follow_configuration_and_secret_references_apart(demo, where):
    change = request_change(demo.engineer, "production", release=ReleaseFactory(
        application=where[0]), rollback_plan="Redeploy", on_call=demo.oncall)
    assert selectors.digests_for(change) == ("", "")
    save(demo, where)
    config_1, refs_1 = selectors.digests_for(change)
    save(demo, where, SOP_EXAMPLE.replace("timeout: 60", "timeout: 61"))
    config_2, refs_2 = selectors.digests_for(change)
    assert config_2 != config_1 and refs_2 == refs_1
    save(demo, where, SOP_EXAMPLE.replace("timeout: 60", "timeout: 61").replace(
        "#api_token", "#api_token_v2"))
    assert selectors.digests_for(change)[1] != refs_2


class FakeVault(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("X-Vault-Token") != "vault-test-token":
            self.send_response(403)
            self.end_headers()
            return
        if self.path == "/v1/secret/production/storefront":
            body = {"data": {"data": {"api_token": "tok-FROM-VAULT-42"}}}
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())
            return
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def vault():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_references_are_resolved_for_the_deployment_and_never_stored_or_logged(
        demo, where, vault, caplog):
    save(demo, where)
    release = ReleaseFactory(application=where[0])
    deployment = Deployment.objects.create(application=where[0], environment=where[1],
                                           release=release, status="running")
    environ = {"PRODUCTION_STOREFRONT_DB_PASSWORD": "pw-FROM-ENV-7", "VAULT_ADDR": vault,
               "VAULT_TOKEN": "vault-test-token"}
    with caplog.at_level(logging.DEBUG):
        config = services.render_for_deployment(deployment, environ=environ)
    assert config["database"]["password"] == "pw-FROM-ENV-7"
    assert config["api"]["token"] == "tok-FROM-VAULT-42"
    assert config["database"]["host"] == "prod-db.internal"
    assert "pw-FROM-ENV" not in caplog.text and "tok-FROM-VAULT" not in caplog.text
    # Nothing in the database holds a resolved value, in any table.
    with connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables "
                       "WHERE table_schema = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT count(*) FROM "{table}" WHERE "{table}"::text '
                           "LIKE '%%FROM-ENV-7%%' OR \"{table}\"::text LIKE '%%FROM-VAULT-42%%'"
                           .replace('"{table}"', f'"{table}"'))
            assert cursor.fetchone()[0] == 0, table


def test_a_missing_secret_names_the_reference_not_a_value(demo, where, vault):
    save(demo, where)
    deployment = Deployment.objects.create(application=where[0], environment=where[1],
                                           release=ReleaseFactory(application=where[0]))
    with pytest.raises(SecretUnavailable) as caught:
        services.render_for_deployment(deployment, environ={
            "VAULT_ADDR": vault, "VAULT_TOKEN": "vault-test-token"})
    assert "PRODUCTION_STOREFRONT_DB_PASSWORD" in caught.value.detail
    with pytest.raises(SecretUnavailable) as caught:
        services.render_for_deployment(deployment, environ={
            "PRODUCTION_STOREFRONT_DB_PASSWORD": "pw", "VAULT_ADDR": vault,
            "VAULT_TOKEN": "wrong"})
    assert "vault:secret/production/storefront#api_token" in caught.value.detail
    assert "403" in caught.value.detail


def test_pages_show_history_refuse_secrets_with_the_line_and_diff(demo, where, client):
    save(demo, where)
    save(demo, where, SOP_EXAMPLE.replace("timeout: 60", "timeout: 90"), reason="Slower API")
    client.force_login(demo.engineer)
    url = "/configuration/storefront/production/"
    page = client.get(url).content.decode()
    assert "Version 2" in page and "Slower API" in page
    assert "vault:secret/production/storefront" in page
    response = client.post(url, {"document": "db:\n  password: hunter2\n", "reason": "x"})
    assert response.status_code == 400
    assert "line 2: db.password" in response.content.decode()
    diff = client.get(url + "diff?from=1&to=2").content.decode()
    assert "-  timeout: 60" in diff and "+  timeout: 90" in diff
    services.configuration_save(actor=demo.engineer, application=where[0],
                                environment=Environment.objects.get(slug="staging"),
                                document=SOP_EXAMPLE.replace("prod-db", "staging-db")
                                .replace("PRODUCTION_", "STAGING_")
                                .replace("secret/production/", "secret/staging/"),
                                reason="Staging")
    across = client.get(url + "diff?against=staging").content.decode()
    assert "-  host: staging-db.internal" in across and "+  host: prod-db.internal" in across
    assert client.get(url + "diff?from=x&to=y").status_code == 200
    client.force_login(demo.outsider)
    assert client.get(url).status_code == 404
