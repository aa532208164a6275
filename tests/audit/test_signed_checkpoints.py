"""Signed checkpoints: the beat task signs the chain head and hands it to the witnesses,
and verify_audit checks the database against what the witnesses hold."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from io import StringIO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import DatabaseError, transaction

from audit.checkpoints import canonical_checkpoint, checkpoint_sign, public_keys
from audit.models import AuditEvent, SignedCheckpoint
from audit.tasks import audit_checkpoint_sign
from audit.trail import compute_hash, verify_chain
from tests.audit.audit_helpers import record, sql, triggers_disabled
from tests.audit.conftest import witness_lines
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


def verify_audit() -> str:
    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def verify_audit_fails() -> str:
    with pytest.raises(CommandError) as exc:
        verify_audit()
    return str(exc.value)


def rewrite_consistently(event_id: int, **changes) -> None:
    """What a database owner can do: change an old event, then recompute the hash of it
    and of every later event so that the chain alone still verifies."""
    with triggers_disabled(), triggers_disabled("portal_auditsignedcheckpoint"):
        prev = None
        for row in AuditEvent.objects.filter(id__gte=event_id).order_by("id").values():
            row = {**row, "actor_id": row["actor_id"]}
            if row["id"] == event_id:
                row.update(changes)
            if prev is not None:
                row["prev_hash"] = prev
            new_hash = compute_hash(row)
            sql("UPDATE portal_auditevent SET after = %s::jsonb, prev_hash = %s, hash = %s "
                "WHERE id = %s", [json.dumps(row["after"]), row["prev_hash"], new_hash,
                                  row["id"]])
            prev = new_hash
        # The database's own copies of the checkpoints are rewritten too: they are not
        # what verification trusts.
        sql("UPDATE portal_auditsignedcheckpoint SET hash = e.hash FROM portal_auditevent e "
            "WHERE e.id = portal_auditsignedcheckpoint.event_id")


def test_the_beat_task_signs_the_head_and_the_witness_file_keeps_it(signed_history):
    events, first, second = signed_history
    assert (first.event_id, second.event_id) == (events[2].pk, events[5].pk)

    lines = witness_lines()
    assert [line["checkpoint"]["event_id"] for line in lines] == [events[2].pk, events[5].pk]
    body = lines[1]["checkpoint"]
    assert body["hash"] == events[5].hash and body["key_id"] == second.key_id
    # The signature verifies with the key in the public-key file, not the database.
    public_keys()[body["key_id"]].verify(base64.b64decode(lines[1]["signature"]),
                                        canonical_checkpoint(body))
    # Nothing new to sign: the task signs nothing and witnesses nothing.
    assert audit_checkpoint_sign()["skipped"].startswith(f"event {events[5].pk} is already")
    record("step.6")
    result = audit_checkpoint_sign()
    assert result["event_id"] == events[5].pk + 1 and result["failed"] == []
    assert len(witness_lines()) == 3


def test_the_key_file_is_private_and_never_in_the_database(signed_history, settings):
    mode = stat.S_IMODE(os.stat(settings.PORTAL_AUDIT_SIGNING_KEY_FILE).st_mode)
    assert mode == 0o600
    private = settings.PORTAL_AUDIT_SIGNING_KEY_FILE.read_text()
    secret_line = private.splitlines()[1]
    for checkpoint in SignedCheckpoint.objects.all():
        assert secret_line not in " ".join(str(v) for v in checkpoint.__dict__.values())
    assert not AuditEvent.objects.filter(after__icontains=secret_line[:20]).exists()


def test_a_consistent_rewrite_of_history_is_caught_by_the_witnessed_checkpoint(
        signed_history):
    events, first, _second = signed_history
    assert "witnessed checkpoints OK: 2 agree" in verify_audit()

    rewrite_consistently(events[1].pk, after={"status": "approved", "by": "nobody"})

    assert verify_chain().ok  # the chain alone no longer shows it
    message = verify_audit_fails()
    assert (f"no longer agrees with the checkpoint of event {first.event_id} signed at "
            f"{first.signed_at.isoformat()} by key {first.key_id}") in message
    assert f"history up to event {first.event_id} was rewritten" in message


def test_a_consistent_rewrite_of_a_real_approval_is_caught(demo):
    from tests.audit.audit_helpers import approved_production_change

    approved_production_change(demo)
    approval = AuditEvent.objects.filter(action="gate.approved").order_by("id").first()
    checkpoint_sign(reason="schedule")
    record("later.event")
    checkpoint_sign(reason="schedule")

    rewrite_consistently(approval.pk, after={**approval.after, "comment": "never said"})

    message = verify_audit_fails()
    assert "was rewritten" in message and "checkpoint of event" in message


def test_events_removed_from_the_end_are_caught_without_an_anchor(signed_history):
    events, _first, second = signed_history
    with triggers_disabled():
        sql("DELETE FROM portal_auditevent WHERE id >= %s", [events[4].pk])
    assert verify_chain().ok
    assert f"event {second.event_id} is gone" in verify_audit_fails()


def test_a_forged_witness_line_is_refused(signed_history, settings):
    path = settings.PORTAL_AUDIT_WITNESS_FILES[0]
    lines = witness_lines()
    lines[0]["checkpoint"]["hash"] = "f" * 64
    with open(path, "w") as out:
        out.write("\n".join(json.dumps(line) for line in lines) + "\n")
    assert "has a signature that does not verify" in verify_audit_fails()


def test_checkpoint_copies_in_the_database_are_append_only(signed_history):
    _events, first, _second = signed_history
    for statement in ("UPDATE portal_auditsignedcheckpoint SET hash = 'x' WHERE id = %s",
                      "DELETE FROM portal_auditsignedcheckpoint WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            sql(statement, [first.pk])
    first.refresh_from_db()
    assert first.hash == AuditEvent.objects.get(pk=first.event_id).hash


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the http.server name
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_witness_receives_the_signed_checkpoint(db, settings):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.PORTAL_AUDIT_WITNESS_WEBHOOKS = [
            f"http://127.0.0.1:{server.server_port}/s3cret-path?token=s3cret-witness-token"]
        event = record("step.0")
        result = checkpoint_sign(reason="schedule")
    finally:
        server.shutdown()
    assert result.failed == [] and any(w.startswith("webhook") for w in result.witnessed)
    assert "s3cret" not in " ".join(result.witnessed)
    (received,) = _Receiver.received
    body = received["checkpoint"]
    assert (body["event_id"], body["hash"]) == (event.pk, event.hash)
    public_keys()[body["key_id"]].verify(base64.b64decode(received["signature"]),
                                        canonical_checkpoint(body))


def test_a_refused_webhook_does_not_stop_the_file_witness(db, settings):
    settings.PORTAL_AUDIT_WITNESS_WEBHOOKS = ["http://169.254.169.254/latest"]
    record("step.0")
    result = checkpoint_sign(reason="schedule")
    assert result.failed == ["webhook http://169.254.169.254"]
    assert len(witness_lines()) == 1


def test_email_witness_writes_to_the_auditors_for_deployment_checkpoints(demo, settings):
    settings.PORTAL_AUDIT_WITNESS_EMAIL = "events"
    auditors = Group.objects.create(name="audit-team")
    auditors.permissions.add(Permission.objects.get(codename="view_audit_trail"))
    engineer = demo.engineer
    engineer.groups.add(auditors)
    engineer.email = "engineer@example.test"
    engineer.save()
    record("step.0")
    checkpoint_sign(reason="schedule")
    assert mail.outbox == []  # the minute's checkpoints stay in the files
    record("step.1")
    checkpoint = checkpoint_sign(reason="deployment 7 succeeded").checkpoint
    (message,) = mail.outbox
    assert "engineer@example.test" in message.to and demo.auditor.email in message.to
    assert demo.cab.email not in message.to
    assert checkpoint.hash in message.body and checkpoint.signature in message.body


def test_key_rotation_keeps_old_checkpoints_verifiable(signed_history, settings, tmp_path):
    settings.PORTAL_AUDIT_SIGNING_KEY_FILE = tmp_path / "rotating-key"
    record("step.6")
    old = checkpoint_sign(reason="schedule").checkpoint
    out = StringIO()
    call_command("audit_key", "rotate", stdout=out)

    rotation = AuditEvent.objects.get(action="audit.key_rotated")
    new_key = rotation.after["key_id"]
    assert rotation.before == {"key_id": old.key_id} and new_key != old.key_id
    assert f"{old.key_id} -> {new_key}" in out.getvalue()
    # The rotation itself is witnessed, signed by the new key right after.
    last = witness_lines()[-1]["checkpoint"]
    assert (last["event_id"], last["key_id"], last["reason"]) == (
        rotation.pk, new_key, "key rotation")
    keys = public_keys()
    assert {old.key_id, new_key} <= set(keys)
    assert all(isinstance(k, Ed25519PublicKey) for k in keys.values())
    # Checkpoints of both keys verify against the database.
    assert "witnessed checkpoints OK: 4 agree" in verify_audit()
    record("step.7")
    assert checkpoint_sign(reason="schedule").checkpoint.key_id == new_key


def test_rotation_needs_a_key_file(signed_history, monkeypatch):
    monkeypatch.setenv("PORTAL_AUDIT_SIGNING_KEY", "-----BEGIN PRIVATE KEY-----")
    with pytest.raises(CommandError, match="comes from PORTAL_AUDIT_SIGNING_KEY"):
        call_command("audit_key", "rotate")
    assert not AuditEvent.objects.filter(action="audit.key_rotated").exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_production_deployment_ending_is_followed_by_a_checkpoint_from_the_worker(
        demo, celery_worker_process):
    from deployments.signals import deployment_finished
    from tests.audit.audit_helpers import approved_production_change, make_deployment

    deployment = make_deployment(approved_production_change(demo))
    head = AuditEvent.objects.order_by("-id").first()
    deployment_finished.send(sender=type(deployment), deployment=deployment,
                             status="succeeded")
    checkpoint = wait_for(lambda: SignedCheckpoint.objects.filter(
        reason=f"deployment {deployment.pk} succeeded").first(), timeout=20)
    # It signs the head at that moment (listeners of the deployment's end may add events).
    assert checkpoint.event_id >= head.pk
    assert AuditEvent.objects.get(pk=checkpoint.event_id).hash == checkpoint.hash
