"""Signed checkpoints of the audit chain, and the witnesses that keep them.

A checkpoint is the chain head (event id, hash), the time it was signed and the id of
the key that signed it, signed with Ed25519. The private key never enters the
database: it is a file (``PORTAL_AUDIT_SIGNING_KEY_FILE``, made on first use with mode
0600) or the environment variable ``PORTAL_AUDIT_SIGNING_KEY`` (a PEM private key).
Every public key the portal ever signed with is appended to a public-key file
(``PORTAL_AUDIT_PUBLIC_KEYS_FILE``), so old checkpoints stay verifiable after a
rotation.

Each checkpoint is handed to the witnesses: append-only files outside the database
(``PORTAL_AUDIT_WITNESS_FILES``), webhooks (``PORTAL_AUDIT_WITNESS_WEBHOOKS``, through
``core.outbound``) and, if ``PORTAL_AUDIT_WITNESS_EMAIL`` says so, the auditors by
email. ``verify_witnessed`` reads the witness files back and checks that the database
still agrees with every checkpoint in them; a database owner who rewrites history and
recomputes every later hash cannot rewrite what the witnesses hold.

The wire form of a checkpoint (a witness line, a bundle's ``checkpoints.jsonl``)::

    {"checkpoint": {"v": 1, "event_id": 812, "hash": "5c1e…", "signed_at": "…",
                    "key_id": "3f9a…", "reason": "schedule"},
     "signature": "<base64 Ed25519 signature of the checkpoint's canonical JSON>"}

The canonical JSON is ``json.dumps(checkpoint, sort_keys=True, separators=(",", ":"))``.
A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.conf import settings
from django.db import IntegrityError, transaction

from audit.models import AuditCheckpoint, AuditEvent, SignedCheckpoint
from audit.trail import AuditError, audit_record
from core import clock

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIGNING_KEY_ENV = "PORTAL_AUDIT_SIGNING_KEY"


# ---------------------------------------------------------------------------
# Keys


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    key_id: str
    public_b64: str


def _signing_key(private: Ed25519PrivateKey) -> SigningKey:
    raw = raw_public(private.public_key())
    return SigningKey(private=private, key_id=key_id_of(raw),
                      public_b64=base64.b64encode(raw).decode())


def _key_file() -> Path:
    return Path(settings.PORTAL_AUDIT_SIGNING_KEY_FILE)


def _public_keys_file() -> Path:
    return Path(settings.PORTAL_AUDIT_PUBLIC_KEYS_FILE)


def _append_line(path: Path, line: str) -> None:
    """Append one line and make it durable: O_APPEND, then fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_key(path: Path, private: Ed25519PrivateKey) -> None:
    """Write the key to a new 0600 file, then rename it over ``path`` (atomic)."""
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _publish_public_key(key: SigningKey) -> None:
    """Record the public key in the public-key file, once."""
    if key.key_id in public_keys():
        return
    _append_line(_public_keys_file(), json.dumps(
        {"key_id": key.key_id, "public_key": key.public_b64,
         "created_at": clock.now().isoformat()}, sort_keys=True))


def signing_key() -> SigningKey:
    """The current signing key: from the environment, else the key file (made on first
    use, mode 0600). Its public key is recorded in the public-key file."""
    pem = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if pem:
        try:
            private = serialization.load_pem_private_key(pem.encode(), password=None)
        except ValueError:
            raise AuditError(f"{SIGNING_KEY_ENV} is not a PEM private key") from None
        source = SIGNING_KEY_ENV
    else:
        path = _key_file()
        if not path.exists():
            _write_private_key(path, Ed25519PrivateKey.generate())
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError:
            raise AuditError(f"{path} is not a PEM private key") from None
        source = str(path)
    if not isinstance(private, Ed25519PrivateKey):
        raise AuditError(f"the audit signing key in {source} is not an Ed25519 key")
    key = _signing_key(private)
    _publish_public_key(key)
    return key


def public_keys() -> dict[str, Ed25519PublicKey]:
    """Every public key in the public-key file, by key id (ids are checked)."""
    keys: dict[str, Ed25519PublicKey] = {}
    path = _public_keys_file()
    if not path.exists():
        return keys
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            raw = base64.b64decode(entry["public_key"], validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{path} line {number} is not a public key entry") from None
        if key_id_of(raw) != entry.get("key_id"):
            raise AuditError(f"{path} line {number}: key id {entry.get('key_id')} does not "
                             "match its public key")
        keys[entry["key_id"]] = public
    return keys


# ---------------------------------------------------------------------------
# Signing


def canonical_checkpoint(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def wire_form(checkpoint: SignedCheckpoint) -> dict:
    return {"checkpoint": checkpoint.body(), "signature": checkpoint.signature}


def seal_sign(body: dict, *, key: SigningKey | None = None) -> tuple[dict, SigningKey]:
    """Sign ``body`` (an evidence bundle's seal) with the checkpoint signing key.

    Returns the seal in wire form, ``{"seal": {..., "key_id": ...}, "signature": ...}``
    (the signature covers the canonical JSON of the seal, as for a checkpoint), and the
    key, whose public half the bundle carries.
    """
    key = key or signing_key()
    sealed = {**body, "key_id": key.key_id}
    signature = base64.b64encode(key.private.sign(canonical_checkpoint(sealed))).decode()
    return {"seal": sealed, "signature": signature}, key


@dataclass
class SignResult:
    checkpoint: SignedCheckpoint | None = None
    skipped: str = ""
    witnessed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def checkpoint_sign(*, reason: str, key: SigningKey | None = None) -> SignResult:
    """Sign the chain head and hand the checkpoint to every witness.

    Nothing is signed when the key already signed this head. The checkpoint is
    committed first, then witnessed: a witness that fails is logged and named in the
    result, and the next checkpoint (a minute later) covers the same events.
    """
    key = key or signing_key()
    head = (AuditEvent.objects.order_by("-id").values("id", "hash").first())
    if head is None:
        return SignResult(skipped="the audit trail is empty")
    if SignedCheckpoint.objects.filter(event_id=head["id"], key_id=key.key_id).exists():
        return SignResult(skipped=f"event {head['id']} is already signed by key {key.key_id}")
    signed_at = clock.now().replace(microsecond=0)
    body = {"v": FORMAT_VERSION, "event_id": head["id"], "hash": head["hash"],
            "signed_at": signed_at.isoformat(), "key_id": key.key_id, "reason": reason[:200]}
    signature = base64.b64encode(key.private.sign(canonical_checkpoint(body))).decode()
    try:
        with transaction.atomic():
            checkpoint = SignedCheckpoint.objects.create(
                event_id=head["id"], hash=head["hash"], signed_at=signed_at,
                key_id=key.key_id, public_key=key.public_b64, signature=signature,
                reason=body["reason"])
    except IntegrityError:
        # Another run signed the same head a moment ago.
        return SignResult(skipped=f"event {head['id']} is already signed by key {key.key_id}")
    result = SignResult(checkpoint=checkpoint)
    witness(checkpoint, result)
    return result


def witness(checkpoint: SignedCheckpoint, result: SignResult) -> None:
    line = json.dumps(wire_form(checkpoint), sort_keys=True, separators=(",", ":"))
    for path in settings.PORTAL_AUDIT_WITNESS_FILES:
        name = f"file {path}"
        try:
            _append_line(Path(path), line)
            result.witnessed.append(name)
        except OSError as exc:
            log.error("audit checkpoint %s not written to witness %s: %s",
                      checkpoint.event_id, name, exc.strerror or exc)
            result.failed.append(name)
    for url in settings.PORTAL_AUDIT_WITNESS_WEBHOOKS:
        _witness_webhook(url, line, result)
    if _emails_wanted(checkpoint):
        _witness_email(checkpoint, line, result)


def _witness_webhook(url: str, line: str, result: SignResult) -> None:
    from core import outbound

    # Only the scheme and host: a token in the path or query must not reach the logs.
    parts = urllib.parse.urlsplit(url)
    name = f"webhook {parts.scheme}://{parts.hostname or '?'}"
    try:
        response = outbound.request("POST", url, body=line.encode(),
                                    headers={"Content-Type": "application/json"})
    except outbound.OutboundError as exc:
        log.error("audit checkpoint not delivered to %s: %s", name,
                  str(exc).replace(url[:80], "<the witness URL>"))
        result.failed.append(name)
        return
    if 200 <= response.status < 300:
        result.witnessed.append(name)
    else:
        log.error("audit checkpoint refused by %s: HTTP %s", name, response.status)
        result.failed.append(name)


def _emails_wanted(checkpoint: SignedCheckpoint) -> bool:
    mode = settings.PORTAL_AUDIT_WITNESS_EMAIL
    return mode == "all" or (mode == "events" and checkpoint.reason != "schedule")


def auditor_emails() -> list[str]:
    from django.contrib.auth import get_user_model
    from django.db.models import Q

    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    granted = Q(user_permissions__codename="view_audit_trail",
                user_permissions__content_type__app_label="audit") | Q(
        groups__permissions__codename="view_audit_trail",
        groups__permissions__content_type__app_label="audit")
    return sorted(set(users.filter(granted).values_list("email", flat=True)))


def _witness_email(checkpoint: SignedCheckpoint, line: str, result: SignResult) -> None:
    from django.core.mail import send_mail

    recipients = auditor_emails()
    if not recipients:
        return
    subject = (f"Audit checkpoint: event {checkpoint.event_id} signed by key "
               f"{checkpoint.key_id}")
    body = (
        "The change portal signed the head of its audit trail. Keep this message: it is\n"
        "one of the witnesses that let you detect a rewritten history later.\n\n"
        f"Event:     {checkpoint.event_id}\nHash:      {checkpoint.hash}\n"
        f"Signed at: {checkpoint.signed_at.isoformat()}\nKey id:    {checkpoint.key_id}\n"
        f"Public key (Ed25519, base64): {checkpoint.public_key}\nReason:    {checkpoint.reason}\n\n"
        f"Signed checkpoint (one line, as in the witness file):\n{line}\n")
    try:
        send_mail(subject, body, None, recipients)
        result.witnessed.append("email to auditors")
    except Exception as exc:  # noqa: BLE001 - a mail server down must not stop the others
        log.error("audit checkpoint email not sent: %s", exc.__class__.__name__)
        result.failed.append("email to auditors")


# ---------------------------------------------------------------------------
# Key rotation


def audit_key_rotate(*, actor) -> tuple[str, str, SignResult]:
    """Replace the signing key with a new one; returns (old id, new id, checkpoint).

    The new public key is recorded in the public-key file first (old keys stay there,
    so older checkpoints remain verifiable); the rotation is an audit event naming both
    key ids; then the new key signs the head (that event) and it is witnessed.
    """
    if os.environ.get(SIGNING_KEY_ENV, "").strip():
        raise AuditError(f"the signing key comes from {SIGNING_KEY_ENV}; put the new key "
                         "there instead (the portal cannot rewrite the environment)")
    old = signing_key()
    new = _signing_key(Ed25519PrivateKey.generate())
    _publish_public_key(new)
    with transaction.atomic():
        audit_record(actor=actor, action="audit.key_rotated", object_type="auditkey",
                     object_id=new.key_id, object_repr=f"audit signing key {new.key_id}",
                     before={"key_id": old.key_id}, after={"key_id": new.key_id})
        # Inside the transaction: if the key file cannot be written, nothing is recorded.
        _write_private_key(_key_file(), new.private)
    return old.key_id, new.key_id, checkpoint_sign(reason="key rotation", key=new)


# ---------------------------------------------------------------------------
# Verifying the database against the witnesses


@dataclass
class WitnessReport:
    checked: int = 0
    before_retention: int = 0
    files: list[str] = field(default_factory=list)
    problem: str | None = None
    latest: dict | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_signed_line(entry: dict, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """Why a checkpoint in wire form does not verify, or None when it does."""
    body, signature = entry.get("checkpoint"), entry.get("signature")
    if not isinstance(body, dict) or not isinstance(signature, str):
        return "is not a signed checkpoint"
    public = keys.get(body.get("key_id"))
    if public is None:
        return f"is signed by key {body.get('key_id')}, which is not in the public-key file"
    try:
        public.verify(base64.b64decode(signature, validate=True), canonical_checkpoint(body))
    except (InvalidSignature, ValueError):
        return f"has a signature that does not verify with key {body.get('key_id')}"
    return None


def _witnessed_checkpoints(keys) -> Iterator[tuple[str, int, dict]]:
    for path in settings.PORTAL_AUDIT_WITNESS_FILES:
        path = Path(path)
        if not path.exists():
            continue
        with path.open() as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"witness {path} line {number}"
                try:
                    entry = json.loads(line)
                except ValueError:
                    raise _WitnessProblem(f"{where} is not JSON") from None
                problem = verify_signed_line(entry, keys)
                if problem:
                    raise _WitnessProblem(f"the checkpoint in {where} {problem}")
                yield where, number, entry["checkpoint"]


class _WitnessProblem(Exception):
    pass


def describe(body: dict) -> str:
    return (f"the checkpoint of event {body['event_id']} signed at {body['signed_at']} "
            f"by key {body['key_id']}")


def verify_witnessed(*, batch_size: int = 5000) -> WitnessReport:
    """Check the database against every checkpoint the witness files hold.

    The database's own copies of the checkpoints are not read: a witness line counts
    when its signature verifies with a key of the public-key file. The files are read
    as a stream, in batches; the checkpoint with the lowest event id that the
    database no longer agrees with is named.
    """
    report = WitnessReport(files=[str(p) for p in settings.PORTAL_AUDIT_WITNESS_FILES
                                  if Path(p).exists()])
    retention = AuditCheckpoint.objects.order_by("-last_event_id").first()
    purged_through = retention.last_event_id if retention else 0
    first_problem: tuple[int, str] | None = None

    def check(batch: list[tuple[str, dict]]) -> None:
        nonlocal first_problem
        stored = dict(AuditEvent.objects.filter(id__in={b["event_id"] for _, b in batch})
                      .values_list("id", "hash"))
        for where, body in batch:
            event_id = body["event_id"]
            if event_id < purged_through:
                report.before_retention += 1
                continue
            held = (retention.last_hash if retention and event_id == purged_through
                    else stored.get(event_id))
            problem = None
            if held is None:
                problem = (f"the database no longer agrees with {describe(body)} ({where}): "
                           f"event {event_id} is gone (events were removed)")
            elif held != body["hash"]:
                problem = (f"the database no longer agrees with {describe(body)} ({where}): "
                           f"it signed hash {body['hash'][:12]}…, the database holds "
                           f"{held[:12]}… for event {event_id}: the history up to event "
                           f"{event_id} was rewritten")
            if problem:
                if first_problem is None or event_id < first_problem[0]:
                    first_problem = (event_id, problem)
                continue
            report.checked += 1
            if report.latest is None or event_id >= report.latest["event_id"]:
                report.latest = body

    try:
        keys = public_keys()
        batch: list[tuple[str, dict]] = []
        for where, _number, body in _witnessed_checkpoints(keys):
            batch.append((where, body))
            if len(batch) >= batch_size:
                check(batch)
                batch = []
        if batch:
            check(batch)
    except (_WitnessProblem, AuditError) as exc:
        report.problem = str(exc)
        return report
    if first_problem is not None:
        report.problem = first_problem[1]
    return report
