"""Deployments over real OpenSSH: a fleet of four hosts behind a bastion (testkit/sshd.py).

Each host is an unprivileged sshd on a loopback address of its own, with its own disk
($PORTAL_TARGET_ROOT) where testkit/ssh_target.py plays the application's deploy
scripts and runs the demo service on HOST:PORT. Deployments run on a real worker of the
environment's own queue, holding that environment's client key and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction

from audit.models import AuditEvent
from catalog import services as catalog
from catalog.models import Application, Environment, Release, Target
from deployments import services
from deployments.models import Deployment
from testkit.ssh_kit import free_port_on, install_kit, standard_commands
from tests.conftest import start_celery_worker, stop_celery_worker, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
PY = "/usr/bin/python3"
# Set by the kit fixture: the hosts' copies of their deploy script and of the verifier.
KIT = VERIFIER = ""
APP = "teller"
KEY_VARIABLE = "EDGE_PRODUCTION_TELLER_SSH_KEY"
STAGING_KEY_VARIABLE = "EDGE_STAGING_TELLER_SSH_KEY"
CONFIG_TOKEN = "tok-edge-9Lm2Qx7Vb"


@pytest.fixture(scope="module")
def portal_key():
    """The portal's signing key for this module's worker, and its public half as PEM."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, public


@pytest.fixture(scope="module", autouse=True)
def kit(ssh_fleet):
    """What the hosts run, copied where their account can read it (testkit/ssh_kit.py)."""
    global KIT, VERIFIER
    KIT, VERIFIER = install_kit(ssh_fleet)
    return KIT


@pytest.fixture(scope="module")
def http_port(ssh_fleet):
    return free_port_on([h.address for h in ssh_fleet.hosts])


@pytest.fixture(scope="module")
def edge_worker(django_db_setup, django_db_blocker, ssh_fleet, portal_key):
    """A worker of edge-production's queue only, holding that environment's key only."""
    proc, log = start_celery_worker(
        queues="deploy.edge-production", name="edge-production", extra_env={
            KEY_VARIABLE: ssh_fleet.client_key_pem,
            "EDGE_PRODUCTION_TELLER_API_TOKEN": CONFIG_TOKEN,
            "PORTAL_OUTBOUND_ALLOW": "127.0.0.0/8",
            "PORTAL_AUDIT_SIGNING_KEY": portal_key[0]})
    yield proc
    stop_celery_worker(proc)


def _host_state(host) -> dict:
    root = Path(host.root)
    applied = root / "applied.log"
    current = root / "current"
    return {"applied": applied.read_text().splitlines() if applied.exists() else [],
            "current": os.readlink(current).split("/")[-1] if current.is_symlink() else ""}


class Edge:
    """The application "teller" on the SSH fleet, in an environment of its own."""

    def __init__(self, demo, fleet, tmp_path: Path, http_port: int, portal_public: bytes, *,
                 environment: str = "edge-production", forced: bool = False,
                 commands: dict | None = None, **app_settings) -> None:
        self.demo, self.fleet, self.tmp_path = demo, fleet, tmp_path
        self.http_port = http_port
        word = environment.upper().replace("-", "_")
        ssh = {"client_key": "${env:" + f"{word}_TELLER_SSH_KEY" + "}",
               "jump_host": f"{fleet.bastion.user}@{fleet.bastion.address}:"
                            f"{fleet.bastion.port}",
               "forced_command": forced}
        self.environment = Environment.objects.create(
            slug=environment, name=environment.replace("-", " ").title(), order=10,
            deploy_settings={"ssh": ssh})
        for line in fleet.known_hosts_text.splitlines():
            if line.strip():
                catalog.host_key_pin(actor=demo.admin, environment=self.environment, line=line)
        for host in fleet.hosts:
            (Path(host.root) / "portal.pub").write_bytes(portal_public)
            (Path(host.root) / "app.env").write_text(f"API_TOKEN={CONFIG_TOKEN}\n")
        key = '"$PORTAL_TARGET_ROOT/portal.pub"'
        self.app = Application.objects.create(slug=APP, name="Teller", executor="ssh",
                                              executor_settings={
            "commands": {**standard_commands(KIT, http_port), **(commands or {})},
            "verify": (f"cd \"$PORTAL_TARGET_ROOT\" && {VERIFIER} check --key {key} "
                       "--environment {environment} --application {application} "
                       "--statement {statement} --artifact {artifact}"),
            # Each host's disk is <fleet>/<host>/root: its inbox is there.
            "upload_dir": f"{Path(fleet.hosts[0].root).parent.parent}/{{target}}/root/inbox",
            "health_url": f"http://{{host}}:{http_port}",
            "safe_to_repeat": ["stop", "start", "backup"],
            "analysis": {"enabled": True, "samples": 10}, **app_settings})
        self.targets = [Target.objects.create(
            application=self.app, environment=self.environment, name=host.name,
            address=f"{host.user}@{host.address}:{host.port}") for host in fleet.hosts]

    def release(self, version: str, *, bad: bool = False) -> Release:
        artifact = self.tmp_path / f"teller-{version}.json"
        artifact.write_text(json.dumps({"error_rate": 1.0} if bad else {"error_rate": 0.0}))
        return Release.objects.create(
            application=self.app, version=version, created_by=self.demo.engineer,
            artifact_url=f"file://{artifact}",
            artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest())

    def start(self, version: str, strategy: str = "all_at_once", *, approved=True,
              **kwargs) -> Deployment:
        release = (Release.objects.filter(application=self.app, version=version).first()
                   or self.release(version, bad=kwargs.pop("bad", False)))
        inputs = None
        if approved:
            from deployments.inputs import inputs_of

            inputs = {**inputs_of(self.app, self.environment), "approval": {
                "change_id": 7000 + release.pk, "change": f"CR-{7000 + release.pk}",
                "fingerprint": "f" * 64, "gates": ["tech_lead", "cab"],
                "approvers": [{"user": "techlead", "gate": "tech_lead"},
                              {"user": "cab", "gate": "cab"}]}}
        with transaction.atomic():
            return services.deployment_create(actor=self.demo.oncall, release=release,
                                              environment=self.environment,
                                              strategy=strategy, inputs=inputs, **kwargs)

    def wait(self, deployment, timeout: float = 180) -> Deployment:
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).status in
                 Deployment.FINAL | {Deployment.Status.NEEDS_ATTENTION}, timeout=timeout)
        deployment.refresh_from_db()
        return deployment

    def deploy(self, version: str, strategy: str = "all_at_once", **kwargs) -> Deployment:
        return self.wait(self.start(version, strategy, **kwargs))

    def served(self) -> dict[str, str | None]:
        answers = {}
        for host in self.fleet.hosts:
            try:
                with urllib.request.urlopen(
                        f"http://{host.address}:{self.http_port}/health", timeout=5) as r:
                    answers[host.name] = json.load(r)["version"]
            except OSError:
                answers[host.name] = None
        return answers

    def log(self, deployment) -> str:
        return "\n".join(deployment.log_lines.order_by("seq").values_list("message", flat=True))


@pytest.fixture
def edge(demo, ssh_fleet, tmp_path, http_port, portal_key, edge_worker):
    made = []

    def make(**kwargs) -> Edge:
        e = Edge(demo, ssh_fleet, tmp_path, http_port, portal_key[1], **kwargs)
        made.append(e)
        return e

    yield make
    ssh_fleet.reset_authorized()
    for host in ssh_fleet.hosts:
        host.run(f"{KIT} stop")
        for name in ("applied.log", "current", "idle", "instance.json", "instance-idle.json",
                     "backup.txt", "release-hold"):
            path = Path(host.root) / name
            if path.is_symlink() or path.exists():
                path.unlink()


def test_a_canary_over_ssh_through_the_bastion_reaches_every_host(edge, ssh_fleet):
    teller = edge()
    first = teller.deploy("1.0.0")
    assert first.status == "succeeded", first.failure_reason
    began = time.monotonic()
    canary = teller.deploy("1.1.0", "canary")
    took = time.monotonic() - began
    assert canary.status == "succeeded", canary.failure_reason + teller.log(canary)
    assert teller.served() == {h.name: "1.1.0" for h in ssh_fleet.hosts}
    for host in ssh_fleet.hosts:
        state = _host_state(host)
        assert state["current"] == "1.1.0"
        assert state["applied"].count("deploy 1.1.0") == 1
    log = teller.log(canary)
    # Remote output streams into the live log, host by host; the verifier ran first.
    assert f"{ssh_fleet.hosts[0].name}: current -> releases/1.1.0" in log
    assert "OK: deployment" in log and "approved by techlead (tech_lead)" in log
    assert "artifact delivered, SHA-256 checked there" in log
    phases = list(canary.steps.filter(name="analysis").values_list("phase", flat=True))
    assert phases == ["canary 5%", "canary 50%", "canary 100%"]
    print(f"\n4-host canary over SSH through a bastion: {took:.1f} s")


def test_a_canary_that_fails_its_analysis_rolls_back_over_the_same_channel(edge, ssh_fleet):
    teller = edge()
    assert teller.deploy("1.0.0").status == "succeeded"
    bad = teller.deploy("1.1.0", "canary", bad=True)
    assert bad.status == "rolled_back", bad.failure_reason
    assert "error rate" in bad.failure_reason
    rollback = teller.wait(Deployment.objects.get(rolled_back_deployment=bad))
    assert rollback.status == "succeeded", rollback.failure_reason + teller.log(rollback)
    assert teller.served() == {h.name: "1.0.0" for h in ssh_fleet.hosts}
    # Only the canary host ever ran the bad version; the target's verifier took the
    # rollback, which no change released, because the portal signed it as one.
    assert [h.name for h in ssh_fleet.hosts if "deploy 1.1.0" in _host_state(h)["applied"]] \
        == [ssh_fleet.hosts[0].name]
    assert "a rollback ordered by" in teller.log(rollback)


def test_rolling_in_batches_then_blue_green_over_ssh(edge, ssh_fleet, http_port):
    idle_port = free_port_on([h.address for h in ssh_fleet.hosts])
    teller = edge(batch_size=2, commands={
        "deploy_idle": f"{KIT} deploy-idle {{artifact}} {{version}} {{target}} {{host}} "
                       f"{idle_port}",
        "health_check_idle": f"{KIT} check {{host}} {idle_port} {{version}}",
        "switch": f"{KIT} switch {{target}} {{host}} {http_port}"})
    rolling = teller.deploy("1.0.0", "rolling")
    assert rolling.status == "succeeded", rolling.failure_reason + teller.log(rolling)
    phases = sorted(set(rolling.steps.exclude(phase="").exclude(name="analysis")
                        .values_list("phase", flat=True)))
    assert phases == ["batch 1 of 2", "batch 2 of 2"]
    green = teller.deploy("1.1.0", "blue_green")
    assert green.status == "succeeded", green.failure_reason + teller.log(green)
    assert teller.served() == {h.name: "1.1.0" for h in ssh_fleet.hosts}
    for host in ssh_fleet.hosts:
        applied = _host_state(host)["applied"]
        # The new version ran beside the old one before traffic moved to it.
        assert applied.index("start 1.1.0") < applied.index("switch 1.1.0")
    assert "analysis" in green.steps.values_list("name", flat=True)


def test_a_timeout_and_a_cancel_end_the_remote_command(edge, ssh_fleet):
    from audit.trail import System
    from deployments.services import deployment_cancel

    teller = edge(commands={"deploy": f"{KIT} deploy {{artifact}} {{version}} --hold"},
                  analysis={"enabled": False}, timeout=3)
    host = ssh_fleet.hosts[0]
    (Path(host.root) / "release-hold").write_text("held by the test\n")
    timed_out = teller.deploy("1.0.0")
    assert timed_out.status == "failed"
    assert "timed out after 3 s; the remote command was ended" in timed_out.failure_reason
    wait_for(lambda: not _remote_deploys(), timeout=30)

    teller.app.executor_settings = {**teller.app.executor_settings, "timeout": 600}
    teller.app.save()
    running = teller.start("1.0.1")
    wait_for(lambda: "deploy-begin 1.0.1" in _host_state(host)["applied"], timeout=60)
    deployment_cancel(actor=System("test"), deployment=running, reason="wrong window")
    cancelled = teller.wait(running, timeout=60)
    assert cancelled.status == "cancelled" and cancelled.failure_reason == "wrong window"
    assert "the deployment was cancelled; the remote command was ended" in teller.log(cancelled)
    wait_for(lambda: not _remote_deploys(), timeout=30)
    (Path(host.root) / "release-hold").unlink()
    assert not any(line.startswith("deploy ") for line in _host_state(host)["applied"])


def test_a_changed_host_key_stops_the_deployment_before_anything_is_sent(edge, ssh_fleet):
    teller = edge()
    victim = ssh_fleet.hosts[2]
    victim.new_host_key()  # rebuilt, or someone in the middle: it stays so afterwards
    failed = teller.deploy("1.0.0")
    assert failed.status == "failed"
    assert "has CHANGED" in failed.failure_reason and victim.name in failed.failure_reason
    refused = AuditEvent.objects.get(action="deployment.host_key_refused")
    assert refused.after["target"] == victim.name
    assert refused.after["offered"] not in refused.after["pinned"]
    # Refused in the pre-deployment step: no host stopped or switched anything.
    assert all(_host_state(h)["applied"] == [] for h in ssh_fleet.hosts)


def test_a_worker_killed_mid_step_over_ssh_does_not_run_that_step_twice(
        edge, ssh_fleet, edge_worker):
    teller = edge(commands={"deploy": f"{KIT} deploy {{artifact}} {{version}} --hold"},
                  analysis={"enabled": False})
    host = ssh_fleet.hosts[0]
    (Path(host.root) / "release-hold").write_text("held by the test\n")
    deployment = teller.start("1.0.0")
    wait_for(lambda: "deploy-begin 1.0.0" in _host_state(host)["applied"], timeout=60)
    pool_child = psutil.Process(edge_worker.pid).children()[0]
    os.kill(pool_child.pid, signal.SIGKILL)
    # The remote deploy script hangs up with the worker's connection; the run resumes on
    # the worker's new pool process and stops at the step that is not safe to repeat.
    done = teller.wait(deployment, timeout=120)
    assert done.status == "needs_attention", done.failure_reason
    # The remote script died with the connection: nothing of it runs any more, so
    # lifting the hold cannot let it switch behind the portal's back.
    wait_for(lambda: not _remote_deploys(), timeout=60)
    (Path(host.root) / "release-hold").unlink()
    state = _host_state(host)
    assert state["applied"].count("deploy-begin 1.0.0") == 1
    assert "deploy 1.0.0" not in state["applied"] and state["current"] == ""
    step = done.steps.get(status="running")
    assert step.name == "deploy" and step.target.name == host.name


def _remote_deploys() -> list:
    return [p for p in psutil.process_iter(["cmdline"])
            if "ssh_target.py" in " ".join(p.info["cmdline"] or [])
            and "--hold" in (p.info["cmdline"] or [])]


def test_forced_command_targets_refuse_a_deployment_no_change_approved(
        edge, ssh_fleet, portal_key):
    teller = edge(forced=True)
    for host in ssh_fleet.hosts:
        # The portal's key may do nothing on the host but what the verifier lets through.
        Path(host.authorized_keys_path).write_text(
            f'restrict,pty,command="{VERIFIER} wrap --key {host.root}/portal.pub '
            f'--environment edge-production --application {APP} --inbox {host.root}/inbox" '
            f"{ssh_fleet.client_public_line}\n")
    approved = teller.deploy("1.0.0")
    assert approved.status == "succeeded", approved.failure_reason + teller.log(approved)
    assert teller.served() == {h.name: "1.0.0" for h in ssh_fleet.hosts}

    unapproved = teller.deploy("1.1.0", approved=False)
    assert unapproved.status == "failed"
    assert "refused the deployment" in unapproved.failure_reason
    assert "not released by an approved change" in unapproved.failure_reason
    assert teller.served() == {h.name: "1.0.0" for h in ssh_fleet.hosts}
    record = (Path(ssh_fleet.hosts[0].root) / "inbox" / "verify.log").read_text()
    assert '"refused"' in record or "refused" in record


def test_the_verifier_on_a_host_refuses_expired_and_unapproved_statements(
        edge, ssh_fleet, portal_key, monkeypatch):
    from datetime import timedelta

    from core import clock
    from deployments import statements

    teller = edge()
    host = ssh_fleet.hosts[1]
    release = Release.objects.create(application=teller.app, version="2.0.0",
                                     created_by=teller.demo.engineer)
    # Never saved, so no worker runs it: only its statement goes to the host.
    deployment = Deployment(pk=990001, application=teller.app, environment=teller.environment,
                            release=release, inputs={})

    def check(wire) -> str:
        (Path(host.root) / "statement.json").write_bytes(statements.statement_bytes(wire))
        answer = host.run(f"cd \"$PORTAL_TARGET_ROOT\" && {VERIFIER} check --key portal.pub "
                          "--environment edge-production --statement statement.json")
        return answer.stdout + answer.stderr

    monkeypatch.setenv("PORTAL_AUDIT_SIGNING_KEY", portal_key[0])
    unapproved = check(statements.statement_sign(deployment))
    deployment.inputs = {"approval": {
        "change_id": 1, "change": "CR-1", "fingerprint": "a" * 64, "gates": ["cab"],
        "approvers": [{"user": "cab", "gate": "cab"}]}}
    expired = check(statements.statement_sign(deployment,
                                              now=clock.now() - timedelta(hours=3)))
    fresh = check(statements.statement_sign(deployment))
    assert unapproved.startswith("FAILED:") and "approved change" in unapproved
    assert expired.startswith("FAILED:") and "expired" in expired
    assert fresh.startswith("OK:") and "approved by cab (cab)" in fresh


def test_secrets_streamed_from_a_host_are_masked_in_the_log(edge, ssh_fleet):
    teller = edge(commands={"backup": 'cat "$PORTAL_TARGET_ROOT/app.env"'},
                  analysis={"enabled": False})
    from configuration import services as configuration

    configuration.configuration_save(
        actor=teller.demo.admin, application=teller.app, environment=teller.environment,
        document="api_token: ${env:EDGE_PRODUCTION_TELLER_API_TOKEN}\n", reason="token")
    done = teller.deploy("1.0.0")
    assert done.status == "succeeded", done.failure_reason + teller.log(done)
    log = teller.log(done)
    assert "API_TOKEN=***" in log and CONFIG_TOKEN not in log
    pem_body = ssh_fleet.client_key_pem.splitlines()[1]
    assert pem_body not in log
    # The client key lived in the worker's memory only: nothing it wrote holds it.
    from django.conf import settings

    written = [p for p in Path(settings.PORTAL_DEPLOY_ROOT).rglob("*") if p.is_file()]
    assert written and not [p for p in written if pem_body.encode() in p.read_bytes()]


def test_a_staging_worker_never_holds_the_production_key(edge, ssh_fleet, portal_key):
    from deployments.services import deploy_queue

    teller = edge()
    # Staging's settings name production's key: the secret policy refuses it.
    staging = Environment.objects.create(
        slug="edge-staging", name="Edge staging", order=9,
        deploy_settings={"ssh": {"client_key": "${env:" + KEY_VARIABLE + "}",
                                 "jump_host": teller.environment.deploy_settings["ssh"][
                                     "jump_host"]}})
    Target.objects.create(application=teller.app, environment=staging,
                          name=ssh_fleet.hosts[0].name, address=teller.targets[0].address)
    proc, _ = start_celery_worker(
        queues=deploy_queue("edge-staging"), name="edge-staging",
        extra_env={STAGING_KEY_VARIABLE: "staging-only-key",
                   "PORTAL_OUTBOUND_ALLOW": "127.0.0.0/8",
                   "PORTAL_AUDIT_SIGNING_KEY": portal_key[0]})
    try:
        environ = psutil.Process(proc.pid).environ()
        assert KEY_VARIABLE not in environ and STAGING_KEY_VARIABLE in environ
        with transaction.atomic():
            borrowed = services.deployment_create(
                actor=teller.demo.oncall, release=teller.release("1.0.0"),
                environment=staging)
        borrowed = teller.wait(borrowed, timeout=90)
    finally:
        stop_celery_worker(proc)
    assert borrowed.status == "failed"
    assert "belongs to the environment edge-production" in borrowed.failure_reason
    assert _host_state(ssh_fleet.hosts[0])["applied"] == []
    # Production's own worker holds it, and deploys with it.
    assert teller.deploy("1.0.0").status == "succeeded"
