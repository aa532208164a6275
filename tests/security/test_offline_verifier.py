"""The offline verifier checks the whole bundle, not only the chain of events.

An evidence bundle is sealed (seal.json) with the key that signs the checkpoints: the
SHA-256 of the manifest, the events, the checkpoint, the keys and the reports, the
scope, the first and last event, the counts and the ids in scope. Each attack below
edits a genuine bundle as someone who wants it to say something else would, keeping
everything else consistent (counts fixed in the manifest, ...): tools/verify_bundle.py
fails each with its own message, in one line, exit status 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoints import canonical_checkpoint, key_id_of, raw_public
from tests.audit.conftest import verifier  # noqa: F401  (fixture)
from tests.audit.test_evidence_bundles import (  # noqa: F401  (fixture)
    entries,
    evidence,
    rewrite,
)

pytestmark = pytest.mark.django_db


def _lines(files) -> list[bytes]:
    return files["events.jsonl"].splitlines()


def _jsonl(lines) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _flag(line: bytes) -> bool:
    return json.loads(line)["in_scope"]


def _flip(line: bytes) -> bytes:
    # The flag is in the line's head, before the hashed event: the event's hash holds.
    if _flag(line):
        return line.replace(b'"in_scope":true', b'"in_scope":false', 1)
    return line.replace(b'"in_scope":false', b'"in_scope":true', 1)


def _manifest(files, **events) -> bytes:
    manifest = json.loads(files["manifest.json"])
    manifest["events"].update(events)
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _fails(verify, path, *pins) -> str:
    code, out = verify(path, *pins)
    assert code == 1, out
    assert out.startswith("FAILED: ") and len(out.splitlines()) == 1, out
    return out


def test_an_untampered_bundle_verifies_with_its_seal(evidence, verifier):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    seal = json.loads(files["seal.json"])
    assert seal["seal"]["key_id"] == checkpoint.key_id
    assert set(seal["seal"]["files"]) == {
        "manifest.json", "events.jsonl", "checkpoints.jsonl", "public-keys.jsonl",
        "report.html", "report.pdf", "README.txt"}
    code, out = verifier(path, checkpoint.public_key)
    assert code == 0, out
    assert out.startswith("OK: ") and "(pinned key)" in out
    assert "the manifest, the report and the scope are as the portal sealed them" in out


def test_removing_the_first_events_and_fixing_the_manifest_fails(
        evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    lines = _lines(files)
    removed, kept = lines[:2], lines[2:]
    manifest = _manifest(
        files, first_id=json.loads(kept[0])["id"],
        in_scope=sum(map(_flag, kept)), linking=sum(not _flag(line) for line in kept))
    bad = rewrite(path, tmp_path / "head.zip", **{"events.jsonl": _jsonl(kept),
                                                  "manifest.json": manifest})
    out = _fails(verifier, bad, checkpoint.public_key)
    first = json.loads(removed[0])["id"]
    assert (f"starts at event {json.loads(kept[0])['id']}, but the portal sealed the "
            f"bundle from event {first}: the first events were removed") in out


@pytest.mark.parametrize("flipped", ["one flag, counts fixed in the manifest",
                                     "two flags, counts unchanged"])
def test_flipping_in_scope_flags_fails(evidence, verifier, tmp_path, flipped):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    lines = _lines(files)
    inside = next(i for i, line in enumerate(lines) if _flag(line))
    linking = next(i for i, line in enumerate(lines) if not _flag(line))
    changes = {}
    if flipped.startswith("one"):
        # An event the auditor should see is hidden among the linking ones.
        lines[inside] = _flip(lines[inside])
        counts = json.loads(files["manifest.json"])["events"]
        changes["manifest.json"] = _manifest(files, in_scope=counts["in_scope"] - 1,
                                             linking=counts["linking"] + 1)
    else:
        lines[inside], lines[linking] = _flip(lines[inside]), _flip(lines[linking])
    changes["events.jsonl"] = _jsonl(lines)
    bad = rewrite(path, tmp_path / "flags.zip", **changes)
    out = _fails(verifier, bad, checkpoint.public_key)
    assert ("the in_scope flags of events.jsonl are not the ones the portal sealed: which "
            "events are in scope was changed") in out


@pytest.mark.parametrize("report", ["report.html", "report.pdf"])
def test_an_edited_report_fails(evidence, verifier, tmp_path, report):  # noqa: F811
    deployment, change, checkpoint, path = evidence
    files = entries(path)
    if report == "report.html":
        edited = files[report].replace(change.reference.encode(), b"CHG-FORGED")
        assert edited != files[report]
    else:
        edited = files[report] + b"\n% an appended page\n"
    bad = rewrite(path, tmp_path / "report.zip", **{report: edited})
    out = _fails(verifier, bad, checkpoint.public_key)
    assert f"{report} (the readable report) was altered after the portal sealed" in out


def test_an_emptied_bundle_fails(evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    manifest = json.loads(files["manifest.json"])
    manifest["events"] = {"in_scope": 0, "linking": 0, "first_id": None, "last_id": None}
    manifest["checkpoint"] = None
    bad = rewrite(path, tmp_path / "empty.zip", **{
        "events.jsonl": b"", "checkpoints.jsonl": b"",
        "manifest.json": json.dumps(manifest).encode()})
    out = _fails(verifier, bad, checkpoint.public_key)
    assert "events.jsonl holds no events, but the portal sealed" in out
    assert "the bundle was emptied" in out


def test_an_edited_scope_in_the_manifest_fails(evidence, verifier, tmp_path):  # noqa: F811
    deployment, *_, checkpoint, path = evidence
    files = entries(path)
    manifest = json.loads(files["manifest.json"])
    manifest["scope"]["deployment"] = deployment.pk + 1
    manifest["title"] = manifest["title"].replace(f"#{deployment.pk}", f"#{deployment.pk + 1}")
    bad = rewrite(path, tmp_path / "scope.zip",
                  **{"manifest.json": json.dumps(manifest).encode()})
    out = _fails(verifier, bad, checkpoint.public_key)
    assert "manifest.json (the bundle's description" in out
    assert "was altered after the portal sealed the bundle" in out


def test_a_bundle_without_its_seal_or_downgraded_fails(evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    del files["seal.json"]
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as out:
        for name, data in files.items():
            out.writestr(name, data)
    assert "the bundle has no seal.json" in _fails(verifier, bare, checkpoint.public_key)

    manifest = json.loads(files["manifest.json"])
    manifest["version"] = 1
    with zipfile.ZipFile(tmp_path / "v1.zip", "w") as out:
        for name, data in {**files, "manifest.json": json.dumps(manifest)}.items():
            out.writestr(name, data)
    out = _fails(verifier, tmp_path / "v1.zip", checkpoint.public_key)
    assert "describes a version 1 bundle" in out


def test_an_extra_file_that_is_not_sealed_fails(evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    bad = rewrite(path, tmp_path / "extra.zip", **{"report-corrected.html": b"<p>fine</p>"})
    out = _fails(verifier, bad, checkpoint.public_key)
    assert "the bundle holds report-corrected.html, which the portal did not seal" in out


def test_a_report_resealed_with_another_key_fails_against_the_pinned_key(
        evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    attacker = Ed25519PrivateKey.generate()
    raw = raw_public(attacker.public_key())
    keys = files["public-keys.jsonl"] + json.dumps(
        {"key_id": key_id_of(raw), "public_key": base64.b64encode(raw).decode()}).encode() \
        + b"\n"
    report = files["report.html"].replace(b"Approval decisions", b"Approvals (all fine)")
    seal = json.loads(files["seal.json"])["seal"]
    seal["key_id"] = key_id_of(raw)
    seal["files"]["report.html"] = hashlib.sha256(report).hexdigest()
    seal["files"]["public-keys.jsonl"] = hashlib.sha256(keys).hexdigest()
    resealed = json.dumps({"seal": seal, "signature": base64.b64encode(
        attacker.sign(canonical_checkpoint(seal))).decode()}).encode()
    bad = rewrite(path, tmp_path / "resealed.zip", **{
        "report.html": report, "public-keys.jsonl": keys, "seal.json": resealed})
    # Self-consistent with its bundled keys; the pinned portal key tells.
    assert verifier(bad)[0] == 0
    out = _fails(verifier, bad, checkpoint.public_key)
    assert f"the bundle's seal is signed by key {key_id_of(raw)}, not by a pinned key" in out


def test_an_edited_seal_fails(evidence, verifier, tmp_path):  # noqa: F811
    *_, checkpoint, path = evidence
    files = entries(path)
    seal = json.loads(files["seal.json"])
    seal["seal"]["events"]["in_scope"] += 1
    bad = rewrite(path, tmp_path / "seal.zip", **{"seal.json": json.dumps(seal).encode()})
    out = _fails(verifier, bad)
    assert f"the bundle's seal does not verify with key {checkpoint.key_id}" in out
