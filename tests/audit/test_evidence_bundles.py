"""Evidence bundles: downloaded from the evidence page and the audit trail, audited, and
checked offline by tools/verify_bundle.py, which refuses every kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from django.utils import timezone

from audit.checkpoints import canonical_checkpoint, checkpoint_sign, key_id_of, raw_public
from audit.models import AuditEvent
from audit.trail import System, audit_record
from catalog.models import Application
from tests.audit.audit_helpers import approved_production_change, make_deployment, record
from tests.audit.conftest import VERIFIER_PATH
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db


def about(obj, action: str, environment: str = "production"):
    with transaction.atomic():
        return audit_record(actor=System("test"), action=action, obj=obj,
                            environment=environment)


def download(client, url: str, path):
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/zip"
    path.write_bytes(b"".join(response.streaming_content))
    return path


def entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def events_of(files) -> list[dict]:
    return [json.loads(line) for line in files["events.jsonl"].splitlines()]


def rewrite(path, target, **files):
    data = {**entries(path), **files}
    with zipfile.ZipFile(target, "w") as out:
        for name, content in data.items():
            out.writestr(name, content)
    return target


@pytest.fixture
def evidence(demo, client, tmp_path):
    """A production deployment's evidence with an unrelated event in the middle, signed."""
    change = approved_production_change(demo)
    record("unrelated.event", object_id="99")
    deployment = make_deployment(change)
    about(deployment, "deployment.succeeded")
    checkpoint = checkpoint_sign(reason="schedule").checkpoint
    client.force_login(demo.auditor)
    path = download(client, f"/auditor/deployments/{deployment.pk}/bundle.zip",
                    tmp_path / "bundle.zip")
    return deployment, change, checkpoint, path


def test_the_deployment_bundle_verifies_offline_and_its_download_is_audited(
        evidence, verifier, demo):
    deployment, change, checkpoint, path = evidence
    files = entries(path)
    assert {"manifest.json", "events.jsonl", "checkpoints.jsonl", "public-keys.jsonl",
            "report.html", "report.pdf", "README.txt"} <= set(files)

    code, out = verifier(path, checkpoint.public_key)
    assert code == 0, out
    lines = events_of(files)
    in_scope = [e for e in lines if e["in_scope"]]
    assert {(e["event"]["object_type"], e["event"]["object_id"]) for e in in_scope} == {
        ("changerequest", str(change.pk)), ("deployment", str(deployment.pk))}
    assert [e["event"]["action"] for e in lines if not e["in_scope"]] == ["unrelated.event"]
    assert lines[-1]["id"] == checkpoint.event_id
    assert out.startswith(f"OK: {len(in_scope)} events in scope and 1 linking events chain "
                          f"to the checkpoint of event {checkpoint.event_id}")
    # Each event line carries exactly the bytes its hash covers.
    for line in files["events.jsonl"].splitlines():
        event = line[line.index(b'"event":') + 8:-1]
        assert hashlib.sha256(event).hexdigest() == json.loads(line)["hash"]

    report = files["report.html"].decode()
    assert change.reference in report and "Approval decisions" in report
    assert checkpoint.key_id in report and "SOP 13.2 compliance" in report
    assert files["report.pdf"].startswith(b"%PDF")

    downloaded = AuditEvent.objects.get(action="audit.bundle_downloaded")
    assert downloaded.actor_id == demo.auditor.pk
    assert downloaded.object_id == str(deployment.pk)
    assert downloaded.after["checkpoint_event"] == checkpoint.event_id


def test_the_verifier_runs_alone_from_an_empty_directory(evidence, tmp_path):
    *_, path = evidence
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(VERIFIER_PATH, alone / "verify_bundle.py")
    probe = ("import runpy, sys\n"
             f"sys.argv = ['verify_bundle.py', {str(path)!r}]\n"
             "try:\n    runpy.run_path('verify_bundle.py', run_name='__main__')\n"
             "except SystemExit as end:\n    code = end.code\n"
             "ours = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('django', 'portal', 'core', 'audit', 'identity', 'reporting', 'tests'))\n"
             "print('IMPORTED', ours)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-I", "-c", probe], cwd=alone, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: ")
    assert "IMPORTED []" in done.stdout


def _forge(files, body_changes=None, key=None):
    """Re-sign the checkpoint and the seal with ``key`` (an attacker's), bundling its
    public key."""
    key = key or Ed25519PrivateKey.generate()
    raw = raw_public(key.public_key())
    entry = json.loads(files["checkpoints.jsonl"])
    body = {**entry["checkpoint"], **(body_changes or {}), "key_id": key_id_of(raw)}
    signed = {"checkpoint": body,
              "signature": base64.b64encode(key.sign(canonical_checkpoint(body))).decode()}
    forged = {"checkpoints.jsonl": json.dumps(signed) + "\n",
              "public-keys.jsonl": json.dumps({"key_id": key_id_of(raw),
                                               "public_key": base64.b64encode(raw).decode()})}
    seal = json.loads(files["seal.json"])["seal"]
    seal["key_id"] = key_id_of(raw)
    seal["checkpoint"] = {name: body[name] for name in ("event_id", "hash", "key_id")}
    seal["files"].update({name: hashlib.sha256(data.encode()).hexdigest()
                          for name, data in forged.items()})
    forged["seal.json"] = json.dumps({"seal": seal, "signature": base64.b64encode(
        key.sign(canonical_checkpoint(seal))).decode()})
    return forged


def _jsonl(lines) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _changed(files):
    lines = files["events.jsonl"].splitlines()
    lines[1] = lines[1].replace(b'"action":"', b'"action":"forged.', 1)
    return {"events.jsonl": _jsonl(lines)}


def _changed_with_its_hash(files):
    lines = files["events.jsonl"].splitlines()
    head, event = lines[1].split(b',"event":', 1)
    event = event[:-1].replace(b'"action":"', b'"action":"forged.', 1)
    head = head[:head.index(b'"hash":"') + 8] + hashlib.sha256(event).hexdigest().encode() \
        + head[head.index(b'"hash":"') + 72:]
    lines[1] = head + b',"event":' + event + b"}"
    return {"events.jsonl": _jsonl(lines)}


def _removed(files):
    lines = files["events.jsonl"].splitlines()
    return {"events.jsonl": _jsonl(lines[:2] + lines[3:])}


def _reordered(files):
    lines = files["events.jsonl"].splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    return {"events.jsonl": _jsonl(lines)}


def _forged_checkpoint(files):
    entry = json.loads(files["checkpoints.jsonl"])
    entry["checkpoint"]["hash"] = "0" * 64
    return {"checkpoints.jsonl": json.dumps(entry) + "\n"}


def _replaced_key(files):
    key = json.loads(files["public-keys.jsonl"])
    other = raw_public(Ed25519PrivateKey.generate().public_key())
    key["public_key"] = base64.b64encode(other).decode()
    return {"public-keys.jsonl": json.dumps(key) + "\n"}


def _truncated(files):
    lines = files["events.jsonl"].splitlines()
    manifest = json.loads(files["manifest.json"])
    manifest["events"]["in_scope"] -= 1
    return {"events.jsonl": _jsonl(lines[:-1]), "manifest.json": json.dumps(manifest)}


TAMPERING = [
    (_changed, "was altered: its fields no longer match its hash"),
    (_changed_with_its_hash, "does not follow event"),
    (_removed, "does not follow event"),
    (_reordered, "the events were reordered"),
    (_forged_checkpoint, "its signature does not verify with key"),
    (_replaced_key, "does not match its key id"),
    (_truncated, "the chain does not reach it"),
]


def test_every_kind_of_tampering_fails_with_the_first_problem(evidence, verifier, tmp_path):
    # One bundle, tampered seven ways (a bundle per case would cost a database each).
    *_, path = evidence
    for tamper, expected in TAMPERING:
        bad = rewrite(path, tmp_path / f"{tamper.__name__}.zip", **tamper(entries(path)))
        code, out = verifier(bad)
        assert code == 1, (tamper.__name__, out)
        assert out.startswith("FAILED: ") and expected in out, (tamper.__name__, out)
        assert len(out.splitlines()) == 1


def test_a_checkpoint_resigned_with_another_key_fails_only_against_the_pinned_key(
        evidence, verifier, tmp_path):
    *_, checkpoint, path = evidence
    forged = rewrite(path, tmp_path / "forged.zip", **_forge(entries(path)))
    assert verifier(forged)[0] == 0  # self-consistent: the bundled key alone cannot tell
    code, out = verifier(forged, checkpoint.public_key)
    assert code == 1 and "not by a pinned key" in out and checkpoint.key_id in out
    # And the genuine bundle verifies against a pinned PEM file.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pem = Ed25519PublicKey.from_public_bytes(base64.b64decode(checkpoint.public_key)) \
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "portal.pem").write_bytes(pem)
    code, out = verifier(path, str(tmp_path / "portal.pem"))
    assert code == 0 and "(pinned key)" in out


def test_the_trail_bundle_holds_what_the_filters_select(demo, client, tmp_path, verifier):
    shop = approved_production_change(demo)
    app = shop.release.application
    billing = Application.objects.create(slug="billing", name="Billing")
    other = request_change(demo.engineer, "production", rollback_plan="Redeploy.",
                           release=ReleaseFactory(application=billing))
    assert AuditEvent.objects.filter(object_id=str(other.pk), environment="production")
    staging = about(shop, "change.noted", environment="staging")
    checkpoint = checkpoint_sign(reason="schedule").checkpoint
    late = about(shop, "change.noted.late")  # after the checkpoint: not bundled yet
    client.force_login(demo.auditor)
    since = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    path = download(client, f"/audit/bundle.zip?application={app.slug}"
                            f"&environment=production&since={since}", tmp_path / "t.zip")

    assert verifier(path, checkpoint.public_key)[0] == 0
    files = entries(path)
    in_scope = [e["event"] for e in events_of(files) if e["in_scope"]]
    expected = AuditEvent.objects.filter(object_type="changerequest", object_id=str(shop.pk),
                                         environment="production", id__lte=checkpoint.event_id)
    assert [e["action"] for e in in_scope] == list(
        expected.order_by("id").values_list("action", flat=True))
    assert staging.pk not in {e["id"] for e in events_of(files) if e["in_scope"]}
    assert all(e["object_id"] == str(shop.pk) for e in in_scope)
    manifest = json.loads(files["manifest.json"])
    assert manifest["not_yet_checkpointed"] == 1 and late.pk > manifest["events"]["last_id"]
    assert manifest["scope"]["application"] == app.slug

    downloaded = AuditEvent.objects.get(action="audit.bundle_downloaded")
    assert downloaded.after["scope"]["environment"] == "production"
    assert downloaded.after["events_in_scope"] == len(in_scope)


def test_bad_filters_are_refused_and_nothing_is_recorded(demo, client):
    client.force_login(demo.auditor)
    response = client.get("/audit/bundle.zip?since=yesterday-ish")
    assert response.status_code == 400 and b"since" in response.content
    assert not AuditEvent.objects.filter(action="audit.bundle_downloaded").exists()


def test_an_unknown_application_gives_an_empty_bundle_that_says_so(demo, client, tmp_path,
                                                                   verifier):
    record("thing.done")
    checkpoint_sign(reason="schedule")
    client.force_login(demo.auditor)
    path = download(client, "/audit/bundle.zip?application=no-such-app", tmp_path / "e.zip")
    assert verifier(path) == (0, "OK: the bundle holds no events; the portal sealed it "
                                 "empty for 'Audit trail: application no-such-app'")
    assert not Application.objects.filter(slug="no-such-app").exists()


@pytest.mark.parametrize("url", ["/audit/bundle.zip", "/audit/verify_bundle.py",
                                 "/auditor/deployments/1/bundle.zip"])
def test_only_auditors_may_download_bundles(demo, client, url):
    client.force_login(demo.engineer)
    assert client.get(url).status_code == 403
    assert not AuditEvent.objects.filter(action="audit.bundle_downloaded").exists()


def test_the_audit_pages_link_the_bundles_and_the_verifier(evidence, client):
    deployment, *_ = evidence
    page = client.get(f"/auditor/deployments/{deployment.pk}/").content.decode()
    assert f"/auditor/deployments/{deployment.pk}/bundle.zip" in page
    assert "/audit/verify_bundle.py" in page
    trail = client.get("/audit/?environment=production").content.decode()
    assert "/audit/bundle.zip?environment=production" in trail
    script = b"".join(client.get("/audit/verify_bundle.py").streaming_content)
    assert script == VERIFIER_PATH.read_bytes()
    assert io.BytesIO(script).read(2) == b"#!"


def test_a_bundle_of_an_unknown_deployment_is_404_and_not_recorded(demo, client):
    client.force_login(demo.auditor)
    assert client.get("/auditor/deployments/999999/bundle.zip").status_code == 404
    assert not AuditEvent.objects.filter(action="audit.bundle_downloaded").exists()
