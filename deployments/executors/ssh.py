"""The `ssh` executor: each SOP step runs a configured command on the targets over SSH.

Application executor settings::

    {"commands": {"stop": "sudo systemctl stop shop",
                  "deploy": "/opt/shop/bin/install {artifact} {version}",
                  "migrate": "/opt/shop/bin/migrate", "start": "sudo systemctl start shop",
                  "health_check": "curl -fsS http://localhost:8080/health"},
     "safe_to_repeat": ["stop", "start", "health_check"], "timeout": 600,
     "user": "deploy", "upload_dir": "/srv/shop/incoming",
     "verify": "python3 /opt/portal/verify_deploy.py check --key /etc/portal/deploy.pub"
               " --environment {environment} --statement {statement} --artifact {artifact}",
     "health_url": "http://{host}:8080"}

Environment deploy settings (``"ssh"``), kept per environment (SOP 10.2)::

    {"ssh": {"client_key": "${env:PRODUCTION_SHOP_SSH_KEY}",
             "jump_host": "jump@bastion.example.com:22", "forced_command": false}}

A target's address is ``user@host:port`` (``host`` alone takes the ``user`` setting and
port 22). The host keys of targets and bastion are pinned per environment
(``catalog.HostKey``). Placeholders, each shell-quoted: {application}, {environment},
{version}, {deployment}, {target}, {host}, {artifact} (its path on the target),
{statement} (the signed deploy statement's path there), {upload_dir}.

The pre-deployment step delivers the verified artifact (SFTP, or the forced command's
``put``) and the signed statement to every target, checks the artifact's SHA-256 on the
target and runs ``verify`` there, before anything stops or switches. With
``forced_command`` the targets run ``tools/verify_deploy.py wrap`` as the deploy key's
forced command, which checks the statement before every command (docs/targets.md).
A step without a command succeeds and says so; a step without a target runs on the
first target. Steps named in ``safe_to_repeat`` run again after a worker died in them;
others wait for on-call.
"""

from __future__ import annotations

import shlex
import time
import urllib.parse
from pathlib import Path

from django.conf import settings as django_settings
from django.db import transaction
from django.utils.module_loading import import_string

from audit.trail import System, audit_record
from catalog.selectors import pinned_keys
from core.errors import DomainError
from deployments import statements
from deployments.executors.base import Executor, StepFailed, fetch_artifact
from deployments.executors.ssh_channel import (
    REFUSED_BY_TARGET,
    ChannelError,
    Connection,
    Endpoint,
    HostKeyRefused,
    load_client_key,
)
from deployments.inputs import environment_settings
from deployments.inputs import targets as deployment_targets
from deployments.models import Deployment

STATEMENT_FILE = "statement.json"
# The engine's step names an ssh command can be configured for.
STEPS = ("pre_health_check", "backup", "backup_database", "maintenance_on", "migrate",
         "verify_migrations", "maintenance_off", "stop", "deploy", "start", "health_check",
         "deploy_idle", "health_check_idle", "switch", "finalize")
HEALTH_STEPS = ("health_check", "health_check_idle")


class SshExecutor(Executor):
    # Delivering the artifact and statement converges, and a health check only looks;
    # what the configured commands do, only their author knows ("safe_to_repeat").
    steps_safe_to_repeat = frozenset({"pre_health_check", *HEALTH_STEPS})

    def __init__(self, deployment, log) -> None:
        super().__init__(deployment, log)
        self.ssh = (environment_settings(deployment) or {}).get("ssh") or {}
        self._pkey = None
        self._wire: dict | None = None
        self._wire_until = 0.0
        self._delivered: set[str] = set()  # targets holding this run's statement
        self._local_artifact: Path | None = None
        # One session per target for the whole run (through the bastion): a step does
        # not pay two SSH handshakes. A session that broke is opened again.
        self._sessions: dict[str, Connection] = {}

    # --- settings ---------------------------------------------------------------------

    @property
    def forced(self) -> bool:
        return bool(self.ssh.get("forced_command"))

    def upload_dir(self, target) -> str:
        """Where the artifact and statement go on ``target`` (the forced command's inbox)."""
        d = self.deployment
        template = self.settings.get("upload_dir") or ".portal/{application}"
        return template.format(application=d.application.slug, environment=d.environment.slug,
                               target=target.name)

    def remote_artifact(self, target) -> str:
        release = self.deployment.release
        name = statements.artifact_name(release)
        if not name:
            return ""
        if self.forced:  # the wrapper's verified copy, named by its digest
            return f"{self.upload_dir(target)}/verified/{release.artifact_sha256}/{name}"
        return f"{self.upload_dir(target)}/{name}"

    def endpoint(self, target) -> Endpoint:
        try:
            return Endpoint.parse(target.address or target.name,
                                  default_user=self.settings.get("user") or
                                  self.ssh.get("user", ""))
        except ChannelError as exc:
            raise StepFailed(f"target {target.name}: {exc}") from None

    # --- the environment's key and pins -----------------------------------------------

    def _secret(self, field: str) -> str | None:
        reference = self.ssh.get(field)
        if not reference:
            return None
        resolver = import_string(django_settings.PORTAL_SECRET_RESOLVER)
        try:
            value = resolver(self.deployment, reference)
        except DomainError as exc:
            raise StepFailed(f"the SSH {field.replace('_', ' ')} of "
                             f"{self.deployment.environment.name}: {exc.detail}") from None
        self.secrets.add(value)
        return value

    def client_key(self):
        if self._pkey is None:
            if not self.ssh.get("client_key"):
                raise StepFailed(f"{self.deployment.environment.name} has no SSH client key: "
                                 "its deploy settings name one (ssh.client_key, a secret "
                                 "reference of that environment)")
            text = self._secret("client_key")
            try:
                self._pkey = load_client_key(text, self._secret("client_key_passphrase"))
            except ChannelError as exc:
                raise StepFailed(str(exc)) from None
        return self._pkey

    def connect(self, target) -> Connection:
        endpoint = self.endpoint(target)
        jump = None
        if self.ssh.get("jump_host"):
            try:
                jump = Endpoint.parse(self.ssh["jump_host"], default_user=endpoint.user)
            except ChannelError as exc:
                raise StepFailed(f"the bastion: {exc}") from None
        try:
            return Connection(endpoint, pkey=self.client_key(), jump=jump,
                              pins=pinned_keys(self.deployment.environment_id),
                              timeout=float(self.ssh.get("connect_timeout", 15)))
        except HostKeyRefused as exc:
            d = self.deployment
            with transaction.atomic():
                audit_record(actor=System(f"ssh executor, deployment #{d.pk}"),
                             action="deployment.host_key_refused", obj=d,
                             environment=d.environment.slug,
                             after={"host": exc.host, "offered": exc.offered,
                                    "pinned": exc.pinned, "target": target.name},
                             reason=str(exc))
            raise StepFailed(f"{target.name}: {exc}") from None
        except ChannelError as exc:
            raise StepFailed(f"{target.name}: {exc}") from None

    def session(self, target) -> Connection:
        kept = self._sessions.get(target.name)
        if kept is not None and kept.alive():
            return kept
        if kept is not None:
            kept.close()
        self._sessions[target.name] = self.connect(target)
        return self._sessions[target.name]

    def close(self) -> None:
        for kept in self._sessions.values():
            kept.close()
        self._sessions.clear()

    # --- the artifact and the statement -----------------------------------------------

    def _artifact(self) -> Path | None:
        if self._local_artifact is None and self.deployment.release.artifact_url:
            into = self.base / "artifacts" / self.deployment.release.version
            into.mkdir(parents=True, exist_ok=True)
            self._local_artifact = fetch_artifact(self.deployment.release, into, self.log)
        return self._local_artifact

    def statement(self) -> dict:
        """This run's signed statement; a fresh one once half its validity is gone."""
        if self._wire is None or time.monotonic() > self._wire_until:
            self._wire = statements.statement_sign(self.deployment)
            self._wire_until = time.monotonic() + statements.statement_ttl() / 2
            self._delivered.clear()
            said = self._wire["statement"]
            self.log("info", f"deploy statement signed (key {said['key_id']}, valid until "
                             f"{said['not_after']})")
        return self._wire

    def _upload(self, conn: Connection, target, source: Path, name: str) -> str:
        try:
            if self.forced:
                return conn.put_via_command(source, name)
            return conn.put_via_sftp(source, self.upload_dir(target), name)
        except ChannelError as exc:
            raise StepFailed(str(exc)) from None

    def deliver(self, conn: Connection, target, *, artifact: bool) -> None:
        """Hand ``target`` the statement (and the artifact), checked there."""
        wire = self.statement()
        release = self.deployment.release
        if artifact and self._artifact() is not None:
            digest = self._upload(conn, target, self._artifact(),
                                  statements.artifact_name(release))
            if digest != release.artifact_sha256:
                raise StepFailed(f"{target.name}: the artifact arrived with SHA-256 {digest}, "
                                 f"the release expects {release.artifact_sha256}; nothing "
                                 "switched")
            self.log("info", f"{target.name}: artifact delivered, SHA-256 checked there")
        if target.name in self._delivered:
            return
        staged = self.base / "statements" / f"{self.deployment.pk}.json"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(statements.statement_bytes(wire))
        self._upload(conn, target, staged, STATEMENT_FILE)
        if self.settings.get("verify") and not self.forced:
            self._command(conn, target, "verify", self.settings["verify"])
        self._delivered.add(target.name)

    # --- commands -----------------------------------------------------------------------

    def _values(self, target) -> dict[str, str]:
        d = self.deployment
        values = {"application": d.application.slug, "environment": d.environment.slug,
                  "version": d.release.version, "deployment": str(d.pk),
                  "target": target.name, "host": self.endpoint(target).host,
                  "artifact": self.remote_artifact(target),
                  "upload_dir": self.upload_dir(target),
                  "statement": f"{self.upload_dir(target)}/{STATEMENT_FILE}"}
        return {k: shlex.quote(v) if v else "''" for k, v in values.items()}

    def _should_stop(self) -> str:
        status = (Deployment.objects.filter(pk=self.deployment.pk)
                  .values_list("status", flat=True).first())
        if status == Deployment.Status.STOPPING:
            return "the deployment was cancelled"
        if status in Deployment.FINAL:
            return f"the deployment ended ({status})"
        return ""

    def _command(self, conn: Connection, target, step_name: str, template: str) -> str:
        try:
            command = template.format(**self._values(target))
        except (KeyError, ValueError, IndexError) as exc:
            raise StepFailed(f"the command for {step_name} is malformed: {exc}") from None
        self.log("info", f"{target.name}$ {command}")
        try:
            code, last = conn.run(
                command, line=lambda text: self.log("info", f"{target.name}: {text}"),
                timeout=float(self.settings.get("timeout", 600)),
                should_stop=self._should_stop)
        except ChannelError as exc:
            raise StepFailed(f"{step_name} on {target.name}: {exc}") from None
        if code == REFUSED_BY_TARGET and self.forced or step_name == "verify" and code:
            raise StepFailed(f"{target.name} refused the deployment: {last or 'no reason given'}")
        if code != 0:
            raise StepFailed(f"{step_name} on {target.name} exited with code {code}"
                             + (f": {last}" if last else ""))
        return last

    def _targets_for(self, target) -> list:
        if target is not None:
            return [target]
        found = deployment_targets(self.deployment)
        if not found:
            raise StepFailed("the ssh executor deploys to targets; this application has "
                             f"none in {self.deployment.environment.name}")
        return found[:1]

    def _remote(self, step_name: str, target) -> str:
        template = self.settings.get("commands", {}).get(step_name)
        details = []
        for each in self._targets_for(target):
            conn = self.session(each)
            self.deliver(conn, each, artifact=False)
            if template:
                last = self._command(conn, each, step_name, template)
                details.append(f"{each.name}: {last[:200] or 'done'}")
            elif step_name in HEALTH_STEPS:
                details.append(self._http_health(each))
        return "; ".join(details) or f"{step_name} done"

    def _http_health(self, target) -> str:
        from deployments.health import HttpProber

        url = self.settings["health_url"].format(host=self.endpoint(target).host,
                                                 target=target.name)
        parsed = urllib.parse.urlparse(url)
        healthy, said = HttpProber().health((parsed.hostname, parsed.port or 80))
        if not healthy:
            raise StepFailed(f"{target.name}: {said}")
        return f"{target.name}: {said}"

    # --- the engine's entry points -----------------------------------------------------

    def run(self, step) -> str:
        commands = self.settings.get("commands", {})
        if step.name != "pre_health_check" and step.name not in commands and not (
                step.name in HEALTH_STEPS and self.settings.get("health_url")):
            return f"no command configured for {step.name}"
        return super().run(step)

    def step_pre_health_check(self, target=None) -> str:
        """SOP 10.1: the artifact is verified on every target before any of them stops."""
        template = self.settings.get("commands", {}).get("pre_health_check")
        targets = deployment_targets(self.deployment)
        for each in targets:
            conn = self.session(each)
            self.deliver(conn, each, artifact=True)
            if template:
                self._command(conn, each, "pre_health_check", template)
        release = self.deployment.release
        what = (f"artifact (SHA-256 {release.artifact_sha256[:12]}…) and statement"
                if release.artifact_url else "statement")
        return f"{what} delivered and checked on {len(targets)} target(s)"

    def __getattr__(self, name: str):
        if name.startswith("step_") and name[5:] in STEPS:
            return lambda target=None: self._remote(name[5:], target)
        raise AttributeError(name)

    def endpoints(self, targets, slot: str = "live") -> dict[str, tuple[str, int] | None]:
        """Where each target answers HTTP (``health_url``); None where nothing answers
        there, as for a target that runs nothing yet."""
        template = self.settings.get("health_url")
        if not template:
            return super().endpoints(targets, slot)
        from deployments.health import HttpProber

        prober = HttpProber(timeout=2.0)
        found: dict[str, tuple[str, int] | None] = {}
        for target in targets:
            url = template.format(host=self.endpoint(target).host, target=target.name)
            parsed = urllib.parse.urlparse(url)
            endpoint = (parsed.hostname, parsed.port or 80)
            _, said = prober.health(endpoint)
            found[target.name] = None if "answered nothing" in said else endpoint
        return found
