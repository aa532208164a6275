"""Signed deploy statements and pinned SSH host keys, without an SSH server.

What a target or deployer is told about a deployment (the portal's signed word that it
was approved), how a webhook deployer receives it, and how administrators pin the host
keys the ssh executor trusts. Over real sshd: tests/deployments/test_ssh_targets.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from approvals import services as approvals
from audit.checkpoints import public_keys
from audit.models import AuditEvent
from catalog import services as catalog
from catalog.models import Environment, HostKey
from core.errors import Conflict, Invalid, Refused
from deployments import statements
from tests.conftest import PASSWORD
from tests.deployments.test_executors_and_providers import server  # noqa: F401 - fixture
from tests.factories import ReleaseFactory, executor_app, request_change, run_deployment

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")


def verify(wire: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """tools/verify_deploy.py check, as a target runs it, with the portal's public keys."""
    statement = tmp_path / "statement.json"
    statement.write_bytes(statements.statement_bytes(wire))
    keys = [f"--key={base64.b64encode(k.public_bytes_raw()).decode()}"
            for k in public_keys().values()]
    return subprocess.run([sys.executable, str(REPO / "tools" / "verify_deploy.py"), "check",
                           *keys, "--statement", str(statement), *args],
                          capture_output=True, text=True, timeout=60)


def test_an_approved_change_deploys_with_a_signed_statement_of_who_approved_what(
        demo, tmp_path):
    app, staging = executor_app("command", {})
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(application=app))
    approvals.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approvals.gate_approve(actor=demo.qa, change=change, role="qa")
    deployment = approvals.change_request_deploy(actor=demo.engineer, change=change)

    kept = deployment.inputs["approval"]
    assert kept["change"] == change.reference and kept["change_id"] == change.pk
    assert kept["fingerprint"] == deployment.inputs["change_version"]
    assert sorted(kept["gates"]) == ["qa", "tech_lead"]
    assert sorted((a["user"], a["gate"]) for a in kept["approvers"]) == [
        ("qa", "qa"), ("techlead", "tech_lead")]

    wire = statements.statement_sign(deployment)
    said = wire["statement"]
    assert (said["application"], said["environment"], said["version"]) == (
        app.slug, "staging", deployment.release.version)
    assert said["purpose"] == "deploy" and said["deployment"] == deployment.pk
    assert said["not_after"] > said["issued_at"]
    ok = verify(wire, tmp_path, "--environment", "staging", "--application", app.slug)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK:") and change.reference in ok.stdout

    elsewhere = verify(wire, tmp_path, "--environment", "production")
    assert elsewhere.returncode == 1 and "production" in elsewhere.stdout

    forged = json.loads(json.dumps(wire))
    forged["statement"]["version"] = "9.9.9"
    tampered = verify(forged, tmp_path, "--environment", "staging")
    assert tampered.returncode == 1 and tampered.stdout.startswith("FAILED:")


def test_a_deployment_no_change_released_says_so_and_a_target_refuses_it(demo, tmp_path):
    app, staging = executor_app("command", {})
    deployment = run_deployment(demo, app, staging)
    wire = statements.statement_sign(deployment)
    assert wire["statement"]["change_id"] is None and wire["statement"]["approvers"] == []
    refused = verify(wire, tmp_path, "--environment", "staging")
    assert refused.returncode == 1 and "approv" in refused.stdout


def test_the_webhook_deployer_receives_the_signed_statement_with_every_step(demo, server):  # noqa: F811
    url, seen = server(lambda method, path, body: {"status": "succeeded"})
    app, env = executor_app("webhook", {"url": f"{url}/steps"})
    deployment = run_deployment(demo, app, env, "4.0.0")
    assert deployment.status == "succeeded", deployment.failure_reason
    headers = [s[3] for s in seen if s[0] == "POST"]
    assert headers and all("X-Deploy-Statement" in h for h in headers)
    wire = json.loads(base64.b64decode(headers[0]["X-Deploy-Statement"]))
    said = wire["statement"]
    assert (said["version"], said["environment"], said["deployment"]) == (
        "4.0.0", "staging", deployment.pk)
    key = public_keys()[said["key_id"]]
    key.verify(base64.b64decode(wire["signature"]),
               json.dumps(said, sort_keys=True, separators=(",", ":")).encode())


# --- pinned host keys ---------------------------------------------------------------


def test_an_administrator_pins_a_host_key_audited_and_nobody_else_may(demo):
    production = Environment.objects.get(slug="production")
    pinned = catalog.host_key_pin(actor=demo.admin, environment=production,
                                  line=f"[10.0.0.5]:2222,web-1.bank.example {ED25519} web-1")
    assert [k.host for k in pinned] == ["[10.0.0.5]:2222", "web-1.bank.example"]
    assert pinned[0].fingerprint.startswith("SHA256:") and pinned[0].comment == "web-1"
    events = AuditEvent.objects.filter(action="environment.host_key_pinned")
    assert events.count() == 2 and events.first().after["fingerprint"] == pinned[0].fingerprint

    with pytest.raises(Conflict):
        catalog.host_key_pin(actor=demo.admin, environment=production,
                             line=f"web-1.bank.example {ED25519}")
    with pytest.raises(Refused):
        catalog.host_key_pin(actor=demo.oncall, environment=production,
                             line=f"web-2.bank.example {ED25519}")
    assert HostKey.objects.count() == 2

    catalog.host_key_remove(actor=demo.admin, host_key=pinned[0], reason="rebuilt")
    removed = AuditEvent.objects.get(action="environment.host_key_removed")
    assert removed.before["host"] == "[10.0.0.5]:2222" and removed.reason == "rebuilt"


@pytest.mark.parametrize("line, says", [
    ("", "known_hosts line"),
    ("|1|abc= ssh-ed25519 AAAA", "hashed"),
    (f"*.bank.example {ED25519}", "not a host name"),
    ("web-1 ssh-dss AAAAB3NzaC1kc3M=", "key type"),
    ("web-1 ssh-ed25519 not-base64!", "not base64"),
    ("web-1 ecdsa-sha2-nistp256 " + ED25519.split()[1], "does not match its type"),
])
def test_a_line_that_is_not_one_host_key_is_refused_with_the_reason(demo, line, says):
    with pytest.raises(Invalid) as refused:
        catalog.host_key_pin(actor=demo.admin, environment=Environment.objects.first(),
                             line=line)
    assert says in refused.value.detail
    assert not HostKey.objects.exists()


def test_pinning_in_the_admin_goes_through_the_service_and_the_page_shows_the_keys(demo):
    admin = Client()
    admin.login(username="admin", password=PASSWORD)
    production = Environment.objects.get(slug="production")
    answer = admin.post("/admin/catalog/hostkey/add/", {
        "environment": production.pk, "line": f"[10.0.0.9]:22 {ED25519}"})
    assert answer.status_code == 302
    key = HostKey.objects.get()
    assert key.host == "[10.0.0.9]:22" and key.added_by == demo.admin
    assert AuditEvent.objects.filter(action="environment.host_key_pinned",
                                     actor=demo.admin).exists()
    bad = admin.post("/admin/catalog/hostkey/add/", {"environment": production.pk,
                                                      "line": "nonsense"})
    assert bad.status_code == 200 and "ssh-keyscan" in bad.content.decode()
    assert HostKey.objects.count() == 1

    page = admin.get("/environments/").content.decode()
    assert key.fingerprint in page and "[10.0.0.9]:22" in page


# --- the ssh executor's refusals before any connection ------------------------------


@pytest.mark.parametrize("ssh, address, says", [
    ({}, "deploy@203.0.113.5", "Staging has no SSH client key"),
    ({"client_key": "${env:PRODUCTION_SVC_SSH_SSH_KEY}"}, "deploy@203.0.113.5",
     "belongs to the environment production"),
    ({"client_key": "${env:STAGING_SVC_SSH_SSH_KEY}"}, "deploy@10.0.0.5",
     "10.0.0.5 may not be reached: 10.0.0.5 is a private address"),
    ({"client_key": "${env:STAGING_SVC_SSH_SSH_KEY}",
      "jump_host": "jump@169.254.169.254"}, "deploy@10.0.0.5",
     "169.254.169.254 is a cloud metadata address"),
    ({"client_key": "${env:STAGING_SVC_SSH_SSH_KEY}",
      "jump_host": "jump@10.0.0.1"}, "deploy@169.254.169.254",
     "169.254.169.254 may not be reached: it is a cloud metadata service"),
    ({"client_key": "${env:STAGING_SVC_SSH_MISSING}"}, "deploy@203.0.113.5",
     "STAGING_SVC_SSH_MISSING is not set on the worker"),
    ({"client_key": "${env:STAGING_SVC_SSH_SSH_KEY}"}, "deploy@host:notaport",
     "has no valid port"),
])
def test_an_ssh_deployment_is_refused_before_connecting_and_says_why(
        demo, monkeypatch, ssh, address, says):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    monkeypatch.setenv("STAGING_SVC_SSH_SSH_KEY", key)
    monkeypatch.setenv("PRODUCTION_SVC_SSH_SSH_KEY", key)
    app, staging = executor_app("ssh", {"commands": {"deploy": "true"}})
    staging.deploy_settings = {"ssh": ssh}
    staging.save()
    app.targets.update(address=address)
    deployment = run_deployment(demo, app, staging)
    assert deployment.status == "failed"
    assert says in deployment.failure_reason
    log = "\n".join(deployment.log_lines.values_list("message", flat=True))
    assert key.splitlines()[1] not in log and key.splitlines()[1] not in \
        deployment.failure_reason
