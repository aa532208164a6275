#!/usr/bin/env python3
"""Check a change portal deploy statement on a deployment target, before anything switches.

The portal signs one statement per deployment with its Ed25519 key and uploads it
(``statement.json``) next to the artifact. This verifier runs on the target, with
Python 3.9+ and the ``cryptography`` package only (Debian's python3-cryptography is
enough), and lets a deployment through only if the portal released it.

    verify_deploy.py check --key KEY [--key KEY ...] --environment ENV
                           [--application APP] --statement FILE [--artifact FILE]
                           [--now ISO] [--allow-unapproved]

prints "OK: deployment 44 of shop 1.4.0 to production, change CHG-12 approved by alice
(tech_lead), ..." or "FAILED: " and the first problem, in one line; the exit status is
0 or 1. It refuses a statement that

1. is missing, unreadable, not JSON, or not a version 1 ``change-portal-deploy-statement``,
2. names a key id that is none of the pinned keys, or whose signature does not verify
   with the key it names (the statement was altered or forged). A key is pinned with
   --key: a PEM public key file, a file holding the base64 raw 32-byte key (one a
   line; the portal's public-keys.jsonl, one JSON object a line, is read too), or the
   base64 raw key itself. Give several after a key rotation,
3. has expired (now after ``not_after``) or was issued in the future (more than five
   minutes of clock skew),
4. is for another environment, or another application when --application is given,
5. releases no change (``change_id`` null) unless --allow-unapproved is given (a
   development target may allow it), or is a rollback the portal ordered
   (``purpose: rollback`` naming who ordered it: on-call, or the automatic rollback
   after failed health analysis),
6. signs an artifact digest that the --artifact file does not have, or that no file
   is given for (and the other way round: an --artifact when it signs none).

    verify_deploy.py wrap --key KEY ... --environment ENV [--application APP]
                          --inbox DIR [--steps DIR] [--allow-unapproved]

is an OpenSSH forced command, in ``~/.ssh/authorized_keys`` of the deploy account:

    restrict,pty,command="/usr/bin/python3 /opt/portal/verify_deploy.py wrap
    --key /etc/portal/deploy-keys.pub --environment production --inbox
    /srv/deploy/inbox" ssh-ed25519 AAAA... portal-production

It reads the command the client asked for from SSH_ORIGINAL_COMMAND:

- ``put NAME`` stores stdin as DIR/NAME (a temporary file in DIR, fsync, renamed
  over) and prints ``sha256 <hex>``. It is the only command allowed without a valid
  statement: an upload into the inbox switches nothing. NAME is one plain file name
  (letters, digits, ``._-``, not starting with a dot); ``verify.log`` and
  ``verified`` are the target's own.
- Any other command runs only if DIR/statement.json verifies exactly as ``check``
  would, with DIR/<artifact_name> as the artifact. The artifact is first copied to
  DIR/verified/<sha256>/<artifact_name> (the copy is hashed as it is written, so a file
  swapped after the check is not the one used); the command gets PORTAL_ARTIFACT (that
  path, "" without an artifact), PORTAL_APPLICATION, PORTAL_ENVIRONMENT,
  PORTAL_VERSION, PORTAL_DEPLOYMENT and PORTAL_CHANGE in its environment, and replaces
  this process (os.execv). Without --steps it runs as ``/bin/sh -c COMMAND``; with
  --steps its first word must name an executable file directly in that directory,
  which is run with the other words (shell quoting) as its arguments.
- An interactive login (no command) is always refused; anything refused prints
  "refused: <reason>" on stderr and exits with status 77.

Every upload, every refusal and every command run is appended as one JSON line to
DIR/verify.log: the target's own record of what the portal (or anyone holding its
deploy key) asked for. A statement stays valid until its ``not_after``: within that
time it can be used again, so the portal keeps it short. docs/targets.md in the portal
describes the statement and how to install this verifier.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
from datetime import datetime, timedelta, timezone

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - said in one line instead of a traceback
    print("FAILED: the Python package 'cryptography' is needed (apt install "
          "python3-cryptography, or pip install cryptography)")
    sys.exit(1)

KIND = "change-portal-deploy-statement"
VERSION = 1
STATEMENT = "statement.json"
LOG = "verify.log"
VERIFIED = "verified"
REFUSED = 77
SKEW = timedelta(minutes=5)
MAX_STATEMENT = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
HEX64 = re.compile(r"[0-9a-f]{64}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00)")
# datetime.UTC is Python 3.11+; a target may run 3.9.
UTC = timezone(timedelta(0))


class Problem(Exception):
    pass


# ---------------------------------------------------------------------------
# Keys


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_key(text: str, value: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        raise Problem(f"--key {value!r} is not an Ed25519 public key (PEM or base64)") \
            from None


def _key_line(line: str, value: str) -> Ed25519PublicKey:
    """One line of a key file: a base64 raw key, or a line of the portal's
    public-keys.jsonl (``{"key_id": ..., "public_key": ...}``)."""
    if not line.startswith("{"):
        return _raw_key(line, value)
    try:
        entry = json.loads(line)
        key = _raw_key(entry["public_key"], value)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Problem(f"--key {value!r} holds a line that is not an Ed25519 public key") \
            from None
    if entry.get("key_id") not in (None, key_id_of(raw_public(key))):
        raise Problem(f"--key {value!r}: key {entry.get('key_id')} does not match its key id")
    return key


def load_keys(value: str) -> list:
    """The keys one --key pins: a PEM file, a file of base64 raw keys (or JSON lines),
    or a base64 raw key."""
    text = value
    if os.path.exists(value):
        try:
            with open(value, "rb") as handle:
                text = handle.read().decode("ascii", "replace").strip()
        except OSError as exc:
            raise Problem(f"--key {value!r} cannot be read ({exc.strerror})") from None
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError:
            raise Problem(f"--key {value!r} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise Problem(f"--key {value!r} is not an Ed25519 public key")
        return [key]
    lines = [line.strip() for line in text.splitlines()]
    keys = [_key_line(line, value) for line in lines if line and not line.startswith("#")]
    if not keys:
        raise Problem(f"--key {value!r} holds no key")
    return keys


def pinned_keys(values: list) -> dict:
    pinned = {}
    for value in values:
        for key in load_keys(value):
            pinned[key_id_of(raw_public(key))] = key
    if not pinned:
        raise Problem("no --key given: pin the portal's public key")
    return pinned


# ---------------------------------------------------------------------------
# The statement


def canonical(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def parse_time(value, what: str) -> datetime:
    if not isinstance(value, str) or not STAMP.fullmatch(value):
        raise Problem(f"{what} {value!r} is not a UTC time (2026-12-07T22:00:00Z)")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # Python 3.9's fromisoformat wants 0, 3 or 6 digits of a second's fraction.
    head, dot, rest = value.partition(".")
    if dot:
        fraction, zone = rest[:-6], rest[-6:]
        value = f"{head}.{fraction.ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise Problem(f"{what} {value!r} is not a UTC time") from None


def read_statement(path: str) -> tuple:
    """(statement, signature bytes) of a statement file, its form checked."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_STATEMENT + 1)
    except FileNotFoundError:
        raise Problem(f"there is no deploy statement {path}") from None
    except OSError as exc:
        raise Problem(f"the deploy statement {path} cannot be read ({exc.strerror})") \
            from None
    if len(data) > MAX_STATEMENT:
        raise Problem(f"{path} is larger than a deploy statement can be")
    try:
        entry = json.loads(data)
    except ValueError:
        raise Problem(f"{path} is not JSON") from None
    statement = entry.get("statement") if isinstance(entry, dict) else None
    signature = entry.get("signature") if isinstance(entry, dict) else None
    if not isinstance(statement, dict) or not isinstance(signature, str):
        raise Problem(f"{path} is not a signed deploy statement "
                      '({"statement": {...}, "signature": "..."})')
    if statement.get("kind") != KIND:
        raise Problem(f"{path} is a {statement.get('kind')!r}, not a {KIND}")
    version = statement.get("v")
    if type(version) is not int or version != VERSION:
        raise Problem(f"{path} is a version {version!r} statement; this verifier checks "
                      f"version {VERSION}")
    try:
        signature_bytes = base64.b64decode(signature, validate=True)
    except ValueError:
        raise Problem(f"the signature of {path} is not base64") from None
    return statement, signature_bytes


def check_signature(statement: dict, signature: bytes, pinned: dict) -> str:
    key_id = statement.get("key_id")
    key = pinned.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise Problem(f"the statement is signed by key {key_id}, which is not a pinned key "
                      f"({', '.join(sorted(pinned))})")
    try:
        key.verify(signature, canonical(statement))
    except InvalidSignature:
        raise Problem(f"the statement's signature does not verify with key {key_id} (it "
                      "was altered or forged)") from None
    return key_id


def _field(statement: dict, name: str, kind, empty: bool = False):
    value = statement.get(name)
    if type(value) is not kind or (kind is str and not empty and not value):
        what = {int: "a number", str: "a string" if empty else "a non-empty string"}[kind]
        raise Problem(f"the statement's {name} is {value!r}, not {what}")
    return value


def check_fields(statement: dict) -> None:
    for name in ("application", "environment", "version", "issued_at", "not_after"):
        _field(statement, name, str)
    _field(statement, "deployment", int)
    for name in ("artifact_name", "artifact_sha256", "change", "fingerprint"):
        _field(statement, name, str, empty=True)
    digest = statement["artifact_sha256"]
    if digest:
        if not HEX64.fullmatch(digest):
            raise Problem(f"the statement's artifact_sha256 {digest!r} is not 64 hex digits")
        name = statement["artifact_name"]
        if not NAME.fullmatch(name) or name in (STATEMENT, LOG, VERIFIED):
            raise Problem(f"the statement's artifact_name {name!r} is not a plain file name")
    purpose = statement.get("purpose", "deploy")
    if purpose not in ("deploy", "rollback"):
        raise Problem(f"the statement's purpose is {purpose!r}, not deploy or rollback")
    if purpose == "rollback" and not str(statement.get("authorized_by") or "").strip():
        raise Problem("the statement is a rollback that names nobody who ordered it")
    change_id = statement.get("change_id")
    if change_id is not None and type(change_id) is not int:
        raise Problem(f"the statement's change_id is {change_id!r}, not a number or null")
    approvers, gates = statement.get("approvers"), statement.get("gates")
    if not isinstance(approvers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("user"), str) for a in approvers):
        raise Problem("the statement's approvers are not a list of {user, gate}")
    if not isinstance(gates, list):
        raise Problem("the statement's gates are not a list")


def is_rollback(statement: dict) -> bool:
    """A rollback the portal ordered (on-call, or its automatic rollback after failed
    health analysis): the SOP's way back to the previous release, which a target must
    not refuse for want of a change."""
    return statement.get("purpose") == "rollback" and bool(statement.get("authorized_by"))


def check_time(statement: dict, now: datetime) -> None:
    issued = parse_time(statement["issued_at"], "the statement's issued_at")
    not_after = parse_time(statement["not_after"], "the statement's not_after")
    if now > not_after:
        raise Problem(f"the statement expired at {statement['not_after']} (it is now "
                      f"{stamp(now)}): ask the portal for a new one")
    if issued > now + SKEW:
        raise Problem(f"the statement was issued at {statement['issued_at']}, in the "
                      f"future (it is now {stamp(now)}): check this target's clock")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def check_artifact(statement: dict, artifact: str | None) -> None:
    signed, name = statement["artifact_sha256"], statement["artifact_name"]
    if not signed:
        if artifact is not None:
            raise Problem(f"the statement signs no artifact, but {artifact} was given")
        return
    if artifact is None:
        raise Problem(f"the statement signs artifact {name} (sha256 {signed[:12]}…), but no "
                      "artifact file was given")
    try:
        actual = file_sha256(artifact)
    except FileNotFoundError:
        raise Problem(f"the statement signs artifact {name} (sha256 {signed[:12]}…), but "
                      f"{artifact} does not exist") from None
    except OSError as exc:
        raise Problem(f"the artifact {artifact} cannot be read ({exc.strerror})") from None
    if actual != signed:
        raise Problem(f"the artifact {artifact} has sha256 {actual[:12]}…, the statement "
                      f"signs {signed[:12]}… for {name}: it is not the released artifact")


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify(*, keys: list, environment: str, application: str | None, path: str,
           artifact: str | None, now: datetime, allow_unapproved: bool,
           inbox: str | None = None) -> dict:
    """The statement at ``path`` once every check passed; Problem names the first that
    did not. With ``inbox``, the artifact is the file the statement names in it."""
    pinned = pinned_keys(keys)
    statement, signature = read_statement(path)
    check_signature(statement, signature, pinned)
    check_fields(statement)
    check_time(statement, now)
    if statement["environment"] != environment:
        raise Problem(f"the statement is for environment {statement['environment']!r}, "
                      f"this target is {environment!r}")
    if application is not None and statement["application"] != application:
        raise Problem(f"the statement is for application {statement['application']!r}, "
                      f"this target runs {application!r}")
    if statement.get("change_id") is None and not allow_unapproved \
            and not is_rollback(statement):
        raise Problem(f"deployment {statement['deployment']} was not released by an "
                      "approved change, and this target allows none without "
                      "(--allow-unapproved)")
    if inbox is not None and statement["artifact_sha256"]:
        artifact = os.path.join(inbox, statement["artifact_name"])
    check_artifact(statement, artifact)
    return statement


def summary(statement: dict) -> str:
    what = (f"deployment {statement['deployment']} of {statement['application']} "
            f"{statement['version']} to {statement['environment']}")
    if statement.get("change_id") is None and is_rollback(statement):
        approval = f"a rollback ordered by {statement['authorized_by']}"
    elif statement.get("change_id") is None:
        approval = "with no change (allowed by --allow-unapproved)"
    else:
        names = ", ".join(f"{a['user']} ({a.get('gate', '')})" for a in
                          statement["approvers"]) or "nobody named"
        approval = f"change {statement['change'] or statement['change_id']} approved by {names}"
    artifact = ""
    if statement["artifact_sha256"]:
        artifact = (f", artifact {statement['artifact_name']} "
                    f"(sha256 {statement['artifact_sha256'][:12]}…)")
    return (f"{what}, {approval}{artifact}, valid until {statement['not_after']}, signed by "
            f"key {statement['key_id']}")


# ---------------------------------------------------------------------------
# The forced command


def log_line(inbox: str, **fields) -> None:
    """Append one JSON line to the inbox's verify.log (O_APPEND, then fsync)."""
    record = {"time": stamp(datetime.now(UTC)), **fields}
    fd = os.open(os.path.join(inbox, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(source, directory: str, name: str, expect: str | None = None) -> str:
    """Copy the stream ``source`` to directory/name through a temporary file in the same
    directory (fsync, rename over); the SHA-256 of what was written. With ``expect``,
    a copy of other bytes is removed instead of renamed."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in iter(lambda: source.read(1 << 20), b""):
                digest.update(piece)
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        if expect is not None and digest.hexdigest() != expect:
            raise Problem(f"{name} changed while it was being copied: it is not the "
                          "artifact that was checked")
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return digest.hexdigest()


def verified_copy(inbox: str, statement: dict) -> str:
    """DIR/verified/<sha256>/<artifact_name>, copied from the inbox unless it is there
    with the right digest already; "" when the statement signs no artifact."""
    digest, name = statement["artifact_sha256"], statement["artifact_name"]
    if not digest:
        return ""
    directory = os.path.join(os.path.abspath(inbox), VERIFIED, digest)
    target = os.path.join(directory, name)
    if os.path.isfile(target) and file_sha256(target) == digest:
        return target
    os.makedirs(directory, mode=0o750, exist_ok=True)
    with open(os.path.join(inbox, name), "rb") as source:
        write_atomic(source, directory, name, expect=digest)
    return target


class Refused(Exception):
    def __init__(self, reason: str, deployment=None):
        super().__init__(reason)
        self.deployment = deployment


def put(inbox: str, name: str) -> int:
    if not NAME.fullmatch(name) or name in (LOG, VERIFIED):
        raise Refused(f"put {name!r}: a name is one plain file name (letters, digits, "
                      "'._-', not starting with a dot), not verify.log or verified")
    digest = write_atomic(sys.stdin.buffer, inbox, name)
    log_line(inbox, command=f"put {name}", outcome="stored", reason="", deployment=None,
             sha256=digest)
    print(f"sha256 {digest}")
    return 0


def step_argv(steps: str, command: str) -> list:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise Problem(f"the command cannot be split into words ({exc})") from None
    name = words[0] if words else ""
    if not name or "/" in name or set(name) == {"."}:
        raise Problem(f"{name!r} is not the name of a step in {steps}")
    path = os.path.join(steps, name)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise Problem(f"{name!r} is not an executable step in {steps}")
    return [path, *words[1:]]


def wrap(args) -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "").strip()
    inbox = args.inbox
    words = command.split()
    if len(words) == 2 and words[0] == "put":
        return put(inbox, words[1])
    if words[:1] == ["put"]:
        raise Refused("put takes exactly one file name: put NAME")
    if not command:
        raise Refused("interactive login is not allowed: this key runs verified "
                      "deployment commands only")
    try:
        statement = verify(keys=args.key, environment=args.environment,
                           application=args.application, path=os.path.join(inbox, STATEMENT),
                           artifact=None, inbox=inbox, now=datetime.now(UTC),
                           allow_unapproved=args.allow_unapproved)
    except Problem as problem:
        raise Refused(str(problem)) from None
    deployment = statement["deployment"]
    try:
        argv = step_argv(args.steps, command) if args.steps else ["/bin/sh", "-c", command]
        artifact = verified_copy(inbox, statement)
    except Problem as problem:
        raise Refused(str(problem), deployment) from None
    except OSError as exc:
        raise Refused(f"the verified artifact cannot be written ({exc})", deployment) \
            from None
    os.environ.update({
        "PORTAL_ARTIFACT": artifact,
        "PORTAL_APPLICATION": statement["application"],
        "PORTAL_ENVIRONMENT": statement["environment"],
        "PORTAL_VERSION": statement["version"],
        "PORTAL_DEPLOYMENT": str(deployment),
        "PORTAL_CHANGE": statement["change"],
    })
    try:
        log_line(inbox, command=command[:2000], outcome="run", reason=summary(statement),
                 deployment=deployment)
    except OSError as exc:
        raise Refused(f"{LOG} cannot be written ({exc.strerror}): nothing runs unrecorded",
                      deployment) from None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"failed: {argv[0]} cannot be run ({exc.strerror})", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execv does not return


def run_wrap(args) -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "").strip()
    try:
        return wrap(args)
    except Refused as refused:
        reason, deployment, outcome, status = str(refused), refused.deployment, "refused", \
            REFUSED
    except OSError as exc:
        reason, deployment, outcome, status = f"{command[:40]!r} failed ({exc})", None, \
            "failed", 1
    print(f"{outcome}: {reason}", file=sys.stderr)
    try:
        log_line(args.inbox, command=command[:2000], outcome=outcome, reason=reason,
                 deployment=deployment)
    except OSError as exc:
        print(f"refused: {LOG} cannot be written either ({exc.strerror})", file=sys.stderr)
    return status


def run_check(args) -> int:
    try:
        now = parse_time(args.now, "--now") if args.now else datetime.now(UTC)
        statement = verify(keys=args.key, environment=args.environment,
                           application=args.application, path=args.statement,
                           artifact=args.artifact, now=now,
                           allow_unapproved=args.allow_unapproved)
    except Problem as problem:
        print(f"FAILED: {problem}")
        return 1
    print(f"OK: {summary(statement)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a change portal deploy statement "
                                                 "on a deployment target.")
    modes = parser.add_subparsers(dest="mode", required=True)
    check = modes.add_parser("check", help="check a statement (and artifact), print OK or "
                                           "FAILED")
    wrapper = modes.add_parser("wrap", help="an OpenSSH forced command: run "
                                            "SSH_ORIGINAL_COMMAND only with a verified "
                                            "statement")
    for mode in (check, wrapper):
        mode.add_argument("--key", action="append", required=True, metavar="KEY",
                          help="the portal's public key: a PEM file, a file of base64 raw "
                               "keys, or a base64 raw key; repeat after a key rotation")
        mode.add_argument("--environment", required=True,
                          help="the environment this target belongs to")
        mode.add_argument("--application", help="the application this target runs")
        mode.add_argument("--allow-unapproved", action="store_true",
                          help="accept a deployment not released by a change")
    check.add_argument("--statement", required=True, help="the statement.json to check")
    check.add_argument("--artifact", help="the artifact file the statement must sign")
    check.add_argument("--now", help="check as of this UTC time instead of now")
    wrapper.add_argument("--inbox", required=True,
                         help="the directory uploads go to (statement.json, artifacts)")
    wrapper.add_argument("--steps", help="run only executable files of this directory")
    args = parser.parse_args(argv)
    return run_check(args) if args.mode == "check" else run_wrap(args)


if __name__ == "__main__":
    sys.exit(main())
