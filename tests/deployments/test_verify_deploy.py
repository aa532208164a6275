"""tools/verify_deploy.py on a deployment target: a deployment runs only with a statement
the portal signed for this environment, still valid, with the released artifact.

The tool runs as a real subprocess under the target's interpreter (/usr/bin/python3
with its distribution's cryptography, else this one). Statements are signed here with
a fresh Ed25519 key, exactly as the wire form says: the canonical JSON of the
statement object.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_deploy.py"
NOW = datetime(2026, 12, 7, 22, 30, tzinfo=UTC)
ARTIFACT = b"shop 1.4.0 release archive\n" * 100


def _interpreter() -> str:
    system = "/usr/bin/python3"
    if os.path.exists(system) and subprocess.run(
            [system, "-c", "import cryptography"], capture_output=True).returncode == 0:
        return system
    return sys.executable


PYTHON = _interpreter()


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Signer:
    """The portal's side of the statement, as the wire form describes it."""

    def __init__(self):
        self.private = Ed25519PrivateKey.generate()
        public = self.private.public_key()
        self.raw = public.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.raw).hexdigest()[:16]
        self.b64 = base64.b64encode(self.raw).decode()
        self.pem = public.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    def statement(self, *, now: datetime = NOW, artifact: bytes | None = ARTIFACT,
                  **fields) -> dict:
        body = {
            "v": 1, "kind": "change-portal-deploy-statement", "application": "shop",
            "environment": "production", "version": "1.4.0",
            "artifact_name": "shop-1.4.0.tar.gz" if artifact is not None else "",
            "artifact_sha256": hashlib.sha256(artifact).hexdigest() if artifact else "",
            "change_id": 12, "change": "CHG-12", "fingerprint": "ab" * 32,
            "approvers": [{"user": "alice", "gate": "tech_lead"},
                          {"user": "carol", "gate": "cab"}],
            "gates": ["tech_lead", "cab"], "deployment": 44,
            "issued_at": _stamp(now - timedelta(minutes=1)),
            "not_after": _stamp(now + timedelta(hours=1)), "key_id": self.key_id,
        }
        body.update(fields)
        return body

    def sign(self, body: dict) -> dict:
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return {"statement": body,
                "signature": base64.b64encode(self.private.sign(data)).decode()}


@pytest.fixture
def signer():
    return Signer()


@pytest.fixture
def target(tmp_path, signer):
    """A target: the portal's key pinned as a file, the artifact and a statement."""
    keyfile = tmp_path / "deploy-keys.pub"
    keyfile.write_text(signer.b64 + "\n")
    (tmp_path / "shop-1.4.0.tar.gz").write_bytes(ARTIFACT)
    return tmp_path


def write(path: Path, entry: dict) -> Path:
    path.write_text(json.dumps(entry))
    return path


def check(target: Path, entry: dict | None = None, *extra: str, keys=None,
          artifact: bool = True, environment: str = "production") -> tuple[int, str]:
    statement = target / "statement.json"
    if entry is not None:
        write(statement, entry)
    args = [PYTHON, str(TOOL), "check", "--environment", environment,
            "--statement", str(statement), "--now", _stamp(NOW), *extra]
    for key in keys or [str(target / "deploy-keys.pub")]:
        args += ["--key", key]
    if artifact:
        args += ["--artifact", str(target / "shop-1.4.0.tar.gz")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = done.stdout.strip()
    assert len(out.splitlines()) == 1, (done.stdout, done.stderr)
    return done.returncode, out


def refused(target, entry, *extra, **kwargs) -> str:
    code, out = check(target, entry, *extra, **kwargs)
    assert code == 1 and out.startswith("FAILED: "), out
    return out


# ---------------------------------------------------------------------------
# check


def test_a_good_statement_is_ok_and_names_the_change_and_its_approvers(target, signer):
    code, out = check(target, signer.sign(signer.statement()), "--application", "shop")
    assert code == 0, out
    assert out.startswith("OK: deployment 44 of shop 1.4.0 to production, change CHG-12 "
                          "approved by alice (tech_lead), carol (cab)"), out
    assert "valid until 2026-12-07T23:30:00Z" in out and signer.key_id in out


def test_a_statement_altered_after_signing_is_refused_as_badly_signed(target, signer):
    entry = signer.sign(signer.statement())
    entry["statement"]["version"] = "6.6.6"
    out = refused(target, entry)
    assert f"does not verify with key {signer.key_id}" in out and "altered or forged" in out


def test_a_statement_signed_by_a_key_that_is_not_pinned_is_refused(target, signer):
    stranger = Signer()
    out = refused(target, stranger.sign(stranger.statement()))
    assert f"signed by key {stranger.key_id}, which is not a pinned key ({signer.key_id})" \
        in out


def test_a_forged_signature_naming_the_pinned_key_is_refused(target, signer):
    stranger = Signer()
    out = refused(target, stranger.sign(stranger.statement(key_id=signer.key_id)))
    assert f"does not verify with key {signer.key_id}" in out


def test_an_expired_statement_is_refused(target, signer):
    body = signer.statement(not_after=_stamp(NOW - timedelta(seconds=1)))
    out = refused(target, signer.sign(body))
    assert "expired at 2026-12-07T22:29:59Z" in out


def test_a_statement_issued_in_the_future_is_refused_beyond_five_minutes_of_skew(
        target, signer):
    out = refused(target, signer.sign(signer.statement(
        issued_at=_stamp(NOW + timedelta(minutes=6)))))
    assert "issued at 2026-12-07T22:36:00Z, in the future" in out
    code, out = check(target, signer.sign(signer.statement(
        issued_at="2026-12-07T22:34:00+00:00")))
    assert code == 0, out


def test_a_statement_for_another_environment_is_refused(target, signer):
    out = refused(target, signer.sign(signer.statement()), environment="staging")
    assert "for environment 'production', this target is 'staging'" in out


def test_a_statement_for_another_application_is_refused(target, signer):
    out = refused(target, signer.sign(signer.statement(application="billing")),
                  "--application", "shop")
    assert "for application 'billing', this target runs 'shop'" in out


def test_an_artifact_that_is_not_the_released_one_is_refused(target, signer):
    entry = signer.sign(signer.statement())
    (target / "shop-1.4.0.tar.gz").write_bytes(ARTIFACT + b"backdoor")
    out = refused(target, entry)
    assert "it is not the released artifact" in out


def test_a_missing_artifact_is_refused(target, signer):
    entry = signer.sign(signer.statement())
    (target / "shop-1.4.0.tar.gz").unlink()
    assert "does not exist" in refused(target, entry)
    assert "no artifact file was given" in refused(target, entry, artifact=False)


def test_a_release_without_artifact_needs_no_artifact_file(target, signer):
    code, out = check(target, signer.sign(signer.statement(artifact=None)), artifact=False)
    assert code == 0, out
    assert "signs no artifact" in refused(target, signer.sign(signer.statement(
        artifact=None)))


def test_a_deployment_without_a_change_is_refused_unless_allowed(target, signer):
    entry = signer.sign(signer.statement(change_id=None, change="", approvers=[], gates=[],
                                         environment="development"))
    out = refused(target, entry, environment="development")
    assert "not released by an approved change" in out
    code, out = check(target, entry, "--allow-unapproved", environment="development")
    assert code == 0 and "with no change (allowed by --allow-unapproved)" in out, out


@pytest.mark.parametrize("content, expected", [
    (None, "there is no deploy statement"),
    ("{not json", "is not JSON"),
    ('{"statement": {"kind": "something-else", "v": 1}, "signature": ""}',
     "not a change-portal-deploy-statement"),
    ('{"statement": {"kind": "change-portal-deploy-statement", "v": 2}, "signature": ""}',
     "version 2 statement"),
])
def test_a_statement_that_is_missing_or_not_one_is_refused(target, content, expected):
    if content is not None:
        (target / "statement.json").write_text(content)
    assert expected in refused(target, None)


@pytest.mark.parametrize("form", ["pem-file", "base64-file", "base64", "portal-jsonl"])
def test_the_key_is_pinned_as_pem_base64_file_raw_base64_or_the_portals_key_file(
        target, signer, form):
    if form == "pem-file":
        (target / "key.pem").write_bytes(signer.pem)
        key = str(target / "key.pem")
    elif form == "base64-file":
        key = str(target / "deploy-keys.pub")
    elif form == "portal-jsonl":
        other = Signer()
        (target / "public-keys.jsonl").write_text("".join(
            json.dumps({"key_id": s.key_id, "public_key": s.b64}) + "\n"
            for s in (other, signer)))
        key = str(target / "public-keys.jsonl")
    else:
        key = signer.b64
    code, out = check(target, signer.sign(signer.statement()), keys=[key])
    assert code == 0, out
    stranger = Signer()
    refused(target, stranger.sign(stranger.statement()), keys=[key])


def test_after_a_rotation_both_pinned_keys_are_accepted(target, signer):
    old, new = Signer(), signer
    code, out = check(target, new.sign(new.statement()), keys=[old.b64, new.b64])
    assert code == 0 and new.key_id in out, out
    code, out = check(target, old.sign(old.statement()), keys=[old.b64, new.b64])
    assert code == 0 and old.key_id in out, out


def test_a_key_that_is_not_a_key_is_a_failure_in_one_line(target, signer):
    assert "is not an Ed25519 public key" in refused(target, signer.sign(signer.statement()),
                                                     keys=["not-a-key"])


# ---------------------------------------------------------------------------
# wrap: the forced command


class Wrap:
    """The deploy account of a target: an inbox, the pinned key, maybe a steps dir."""

    def __init__(self, root: Path, signer: Signer):
        self.root, self.signer = root, signer
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.marker = root / "marker"
        self.steps: Path | None = None

    def ssh(self, command: str | None, stdin: bytes = b"", *extra: str):
        env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command
        args = [PYTHON, str(TOOL), "wrap", "--key", str(self.root / "deploy-keys.pub"),
                "--environment", "production", "--application", "shop",
                "--inbox", str(self.inbox), *extra]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        return subprocess.run(args, input=stdin, capture_output=True, timeout=60, env=env)

    def put(self, name: str, data: bytes):
        return self.ssh(f"put {name}", data)

    def release(self, **fields) -> None:
        """What the portal does before it runs anything: upload artifact and statement."""
        now = datetime.now(UTC)
        assert self.put("shop-1.4.0.tar.gz", ARTIFACT).returncode == 0
        entry = self.signer.sign(self.signer.statement(now=now, **fields))
        assert self.put("statement.json", json.dumps(entry).encode()).returncode == 0

    def log(self) -> list[dict]:
        path = self.inbox / "verify.log"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def wrap(target, signer):
    return Wrap(target, signer)


def _refused(done) -> str:
    assert done.returncode == 77, (done.stdout, done.stderr)
    err = done.stderr.decode().strip()
    assert err.startswith("refused: "), err
    return err


def test_put_stores_stdin_in_the_inbox_and_prints_its_digest(wrap):
    done = wrap.put("shop-1.4.0.tar.gz", ARTIFACT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == f"sha256 {hashlib.sha256(ARTIFACT).hexdigest()}"
    assert (wrap.inbox / "shop-1.4.0.tar.gz").read_bytes() == ARTIFACT
    assert wrap.put("shop-1.4.0.tar.gz", b"second").returncode == 0
    assert (wrap.inbox / "shop-1.4.0.tar.gz").read_bytes() == b"second"
    assert [p.name for p in wrap.inbox.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", ["../escape", "sub/file", "..", ".hidden", "verify.log"])
def test_put_refuses_a_name_that_is_not_a_plain_file_in_the_inbox(wrap, name):
    assert "plain file name" in _refused(wrap.put(name, b"x"))
    assert not (wrap.root / "escape").exists()
    assert sorted(p.name for p in wrap.inbox.iterdir()) == ["verify.log"]
    assert wrap.log()[-1]["outcome"] == "refused"


def test_a_command_runs_only_with_a_verified_statement(wrap):
    command = f"touch {shlex.quote(str(wrap.marker))}"
    assert "there is no deploy statement" in _refused(wrap.ssh(command))
    assert not wrap.marker.exists()
    stranger = Signer()
    assert wrap.put("shop-1.4.0.tar.gz", ARTIFACT).returncode == 0
    wrap.put("statement.json", json.dumps(stranger.sign(stranger.statement(
        now=datetime.now(UTC)))).encode())
    assert "not a pinned key" in _refused(wrap.ssh(command))
    assert not wrap.marker.exists()

    wrap.release()
    done = wrap.ssh(command)
    assert done.returncode == 0, done.stderr
    assert wrap.marker.exists()


def test_a_statement_past_its_time_or_for_another_artifact_runs_nothing(wrap):
    command = f"touch {shlex.quote(str(wrap.marker))}"
    wrap.release(not_after=_stamp(datetime.now(UTC) - timedelta(seconds=5)))
    assert "expired" in _refused(wrap.ssh(command))
    wrap.release()
    assert wrap.put("shop-1.4.0.tar.gz", b"something else").returncode == 0
    assert "not the released artifact" in _refused(wrap.ssh(command))
    assert not wrap.marker.exists()


def test_the_command_gets_the_deployment_and_a_verified_copy_of_the_artifact(wrap):
    wrap.release()
    names = ["PORTAL_ARTIFACT", "PORTAL_APPLICATION", "PORTAL_ENVIRONMENT",
             "PORTAL_VERSION", "PORTAL_DEPLOYMENT", "PORTAL_CHANGE"]
    script = " ".join(f'"${name}"' for name in names)
    done = wrap.ssh(f"printf '%s\\n' {script} > {shlex.quote(str(wrap.marker))}")
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(ARTIFACT).hexdigest()
    copy = wrap.inbox / "verified" / digest / "shop-1.4.0.tar.gz"
    assert wrap.marker.read_text().splitlines() == [
        str(copy), "shop", "production", "1.4.0", "44", "CHG-12"]
    assert copy.read_bytes() == ARTIFACT
    # A later change to the inbox does not reach the verified copy.
    wrap.put("shop-1.4.0.tar.gz", b"tampered")
    assert copy.read_bytes() == ARTIFACT


def test_with_steps_only_an_executable_step_runs_with_its_arguments(wrap):
    wrap.steps = wrap.root / "steps"
    wrap.steps.mkdir()
    step = wrap.steps / "switch"
    step.write_text(f'#!/bin/sh\necho "$PORTAL_VERSION $*" > {shlex.quote(str(wrap.marker))}\n')
    step.chmod(0o755)
    (wrap.steps / "notes").write_text("not a step\n")
    wrap.release()
    for command in (f"touch {shlex.quote(str(wrap.marker))}", "notes", "../steps/switch",
                    "..", f"{step} now"):
        assert "step" in _refused(wrap.ssh(command)), command
        assert not wrap.marker.exists(), command
    done = wrap.ssh("switch --to 'blue green'")
    assert done.returncode == 0, done.stderr
    assert wrap.marker.read_text() == "1.4.0 --to blue green\n"


def test_an_interactive_login_is_refused_even_with_a_valid_statement(wrap):
    wrap.release()
    assert "interactive login is not allowed" in _refused(wrap.ssh(None))
    assert "interactive login is not allowed" in _refused(wrap.ssh("  "))


def test_a_development_target_may_run_a_deployment_without_a_change(wrap):
    command = f"touch {shlex.quote(str(wrap.marker))}"
    wrap.release(change_id=None, change="", approvers=[], gates=[])
    assert "not released by an approved change" in _refused(wrap.ssh(command))
    assert not wrap.marker.exists()
    assert wrap.ssh(command, b"", "--allow-unapproved").returncode == 0
    assert wrap.marker.exists()


def test_verify_log_records_uploads_refusals_and_commands_run(wrap):
    command = f"touch {shlex.quote(str(wrap.marker))}"
    _refused(wrap.ssh(command))
    wrap.release()
    assert wrap.ssh(command).returncode == 0
    _refused(wrap.ssh(None))
    log = wrap.log()
    assert [(line["outcome"], line["command"]) for line in log] == [
        ("refused", command), ("stored", "put shop-1.4.0.tar.gz"),
        ("stored", "put statement.json"), ("run", command), ("refused", "")]
    assert "there is no deploy statement" in log[0]["reason"]
    assert log[3]["deployment"] == 44 and "change CHG-12" in log[3]["reason"]
    assert all(line["time"].endswith("Z") for line in log)


def test_an_artifact_swapped_after_the_check_is_not_copied_as_verified(tmp_path):
    """The verified copy is hashed as it is written: bytes other than the signed ones
    (a file replaced between the check and the copy) never land in verified/."""
    spec = importlib.util.spec_from_file_location("verify_deploy", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "shop-1.4.0.tar.gz").write_bytes(b"swapped in after the check")
    statement = {"artifact_name": "shop-1.4.0.tar.gz",
                 "artifact_sha256": hashlib.sha256(ARTIFACT).hexdigest()}
    with pytest.raises(tool.Problem, match="changed while it was being copied"):
        tool.verified_copy(str(tmp_path), statement)
    copies = tmp_path / "verified" / statement["artifact_sha256"]
    assert list(copies.iterdir()) == []
    (tmp_path / "shop-1.4.0.tar.gz").write_bytes(ARTIFACT)
    assert Path(tool.verified_copy(str(tmp_path), statement)).read_bytes() == ARTIFACT
