#!/usr/bin/env python3
"""Verify a change portal evidence bundle offline, without the portal or its database.

    python3 verify_bundle.py evidence.zip [--pin-key KEY ...]

Needs Python 3.9+ and the ``cryptography`` package, nothing else. It checks that

1. every event in events.jsonl hashes to its stored hash (SHA-256 of the event's
   canonical JSON, exactly the bytes in the file),
2. the events chain: each one's prev_hash is the hash of the line before it, ids
   rising, so nothing was removed, inserted or reordered between the first event and
   the checkpoint,
3. the chain reaches the signed checkpoint: the last event is the checkpoint's event
   and has its hash,
4. the checkpoint's Ed25519 signature verifies with the bundled public key (whose id
   must match it) and, with --pin-key, with a key you obtained from the portal's
   operators yourself (a PEM file, a file holding the base64 raw key, or the base64
   raw key itself; give several after a key rotation),
5. the bundle's seal (seal.json, signed with the same key as the checkpoints, and
   pinned the same way) verifies, and the bundle is the one it seals: the same first
   and last event (no event removed before the first one, the bundle not emptied),
   the same events in scope, the same counts, and every file (manifest.json,
   events.jsonl, the checkpoint, the keys, report.html, report.pdf, README.txt)
   byte for byte,
6. the counts agree with manifest.json.

It prints "OK: ..." with the counts, or "FAILED: " and the first problem, in one
line; the exit status is 0 or 1. docs/audit.md in the portal describes the format.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import zipfile

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - said in one line instead of a traceback
    print("FAILED: the Python package 'cryptography' is needed (pip install cryptography)")
    sys.exit(1)

FORMAT = "change-portal-evidence-bundle"
VERSION = 2
SEAL = "seal.json"
PREV = b',"prev_hash":"'
# What each sealed file is, for the message when it no longer matches its seal.
SEALED_AS = {
    "manifest.json": "the bundle's description (its scope, counts and checkpoint)",
    "events.jsonl": "the events",
    "checkpoints.jsonl": "the checkpoint",
    "public-keys.jsonl": "the public keys",
    "report.html": "the readable report",
    "report.pdf": "the readable report",
    "README.txt": "the instructions",
}


class Problem(Exception):
    pass


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_pinned(value: str) -> Ed25519PublicKey:
    text = value
    if os.path.exists(value):
        with open(value, "rb") as handle:
            text = handle.read().decode("ascii", "replace").strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        raise Problem(f"--pin-key {value!r} is not an Ed25519 public key (PEM or base64)") \
            from None
    if not isinstance(key, Ed25519PublicKey):
        raise Problem(f"--pin-key {value!r} is not an Ed25519 public key")
    return key


def read_json_lines(bundle: zipfile.ZipFile, name: str) -> list:
    try:
        data = bundle.read(name)
    except KeyError:
        raise Problem(f"the bundle has no {name}") from None
    try:
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    except ValueError:
        raise Problem(f"{name} is not JSON Lines") from None


def canonical_checkpoint(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def check_keys(entries: list) -> dict:
    keys = {}
    for entry in entries:
        try:
            raw = base64.b64decode(entry["public_key"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError):
            raise Problem("public-keys.jsonl holds an entry that is not an Ed25519 key") \
                from None
        if key_id_of(raw) != entry.get("key_id"):
            raise Problem(f"public key {entry.get('key_id')} does not match its key id "
                          "(the bundled key was replaced)")
        keys[entry["key_id"]] = key
    return keys


def check_checkpoints(entries: list, keys: dict, pinned: dict) -> list:
    checkpoints = []
    for entry in entries:
        body, signature = entry.get("checkpoint"), entry.get("signature")
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise Problem("checkpoints.jsonl holds an entry that is not a signed checkpoint")
        name = f"the checkpoint of event {body.get('event_id')}"
        key_id = body.get("key_id")
        key = keys.get(key_id)
        if key is None:
            raise Problem(f"{name} is signed by key {key_id}, which the bundle does not hold")
        try:
            signature_bytes = base64.b64decode(signature, validate=True)
            key.verify(signature_bytes, canonical_checkpoint(body))
        except (InvalidSignature, ValueError):
            raise Problem(f"{name}: its signature does not verify with key {key_id} (the "
                          "checkpoint was altered or forged)") from None
        if pinned:
            pin = pinned.get(key_id)
            if pin is None:
                raise Problem(f"{name} is signed by key {key_id}, not by a pinned key "
                              f"({', '.join(sorted(pinned))})")
            try:
                pin.verify(signature_bytes, canonical_checkpoint(body))
            except InvalidSignature:  # pragma: no cover - same raw key, same answer
                raise Problem(f"{name}: its signature does not verify with the pinned "
                              f"key {key_id}") from None
        if not isinstance(body.get("event_id"), int) or not re.fullmatch(
                "[0-9a-f]{64}", str(body.get("hash"))):
            raise Problem(f"{name} does not name an event id and a hash")
        checkpoints.append(body)
    checkpoints.sort(key=lambda body: body["event_id"])
    return checkpoints


def check_seal(bundle: zipfile.ZipFile, keys: dict, pinned: dict) -> dict:
    """The seal's body, once its signature verifies (and is by a pinned key, if any)."""
    try:
        entry = json.loads(bundle.read(SEAL))
    except KeyError:
        raise Problem("the bundle has no seal.json: the portal seals every bundle, so this "
                      "one was not made by it or its seal was removed") from None
    except ValueError:
        raise Problem("seal.json is not JSON") from None
    body = entry.get("seal") if isinstance(entry, dict) else None
    signature = entry.get("signature") if isinstance(entry, dict) else None
    if not isinstance(body, dict) or not isinstance(signature, str):
        raise Problem("seal.json is not a signed seal")
    key_id = body.get("key_id")
    key = keys.get(key_id)
    if key is None:
        raise Problem(f"the bundle's seal is signed by key {key_id}, which the bundle does "
                      "not hold")
    try:
        signature_bytes = base64.b64decode(signature, validate=True)
        key.verify(signature_bytes, canonical_checkpoint(body))
    except (InvalidSignature, ValueError):
        raise Problem(f"the bundle's seal does not verify with key {key_id} (seal.json was "
                      "altered or forged)") from None
    if pinned and key_id not in pinned:
        raise Problem(f"the bundle's seal is signed by key {key_id}, not by a pinned key "
                      f"({', '.join(sorted(pinned))})")
    if body.get("format") != FORMAT or body.get("version") != VERSION or not isinstance(
            body.get("events"), dict) or not isinstance(body.get("files"), dict):
        raise Problem("seal.json does not seal a version 2 evidence bundle")
    return body


def _lines(handle, digest, size: int = 1 << 20):
    """The lines of a zip entry, read in 1 MiB pieces (faster than readline); every
    byte read goes into ``digest`` too."""
    rest = b""
    while True:
        piece = handle.read(size)
        if not piece:
            break
        digest.update(piece)
        lines = (rest + piece).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _parse(number: int, line: bytes) -> tuple[int, bytes, bool, bytes, bytes]:
    """(id, stored hash, in scope, prev_hash, event bytes) of one events.jsonl line:
    ``{"id":N,"hash":"<64 hex>","in_scope":true|false,"event":{...}}``."""
    at = line.find(b',"hash":"', 6)
    if not line.startswith(b'{"id":') or at < 0 or not line.endswith(b"}"):
        raise Problem(f"events.jsonl line {number} is not an event line")
    stored = line[at + 9:at + 73]
    tail = line[at + 73:at + 101]
    if tail.startswith(b'","in_scope":true,"event":{'):
        scoped, start = True, at + 99
    elif tail.startswith(b'","in_scope":false,"event":{'):
        scoped, start = False, at + 100
    else:
        raise Problem(f"events.jsonl line {number} is not an event line")
    try:
        event_id = int(line[6:at])
    except ValueError:
        raise Problem(f"events.jsonl line {number} is not an event line") from None
    event = line[start:-1]
    # The last top-level key before prev_hash is a string, and every value after it is a
    # string too, so the last unescaped ',"prev_hash":"' is the event's own.
    found = event.rfind(PREV)
    prev = event[found + 14:found + 78] if found >= 0 else b""
    return event_id, stored, scoped, prev, event


class Walk:
    """What one pass over events.jsonl found."""

    def __init__(self) -> None:
        self.in_scope = self.linking = 0
        self.first_id = self.last_id = None
        self.file = hashlib.sha256()  # the file, byte for byte
        self.scoped_ids = hashlib.sha256()  # the ids of the events in scope, one a line


def walk_events(bundle: zipfile.ZipFile, checkpoints: list) -> Walk:
    """Walk events.jsonl once, streaming, checking every hash and link."""
    by_event = {body["event_id"]: body["hash"].encode() for body in checkpoints}
    walk = Walk()
    in_scope = linking = 0
    previous_id = previous_hash = None
    sha256 = hashlib.sha256
    scoped_ids = walk.scoped_ids
    try:
        handle = bundle.open("events.jsonl")
    except KeyError:
        raise Problem("the bundle has no events.jsonl") from None
    with handle:
        lines = enumerate(_lines(handle, walk.file), start=1)
        for number, line in lines:
            event_id, stored, scoped, prev, event = _parse(number, line)
            if walk.first_id is None:
                walk.first_id = event_id
            if previous_id is not None and event_id <= previous_id:
                raise Problem(f"events.jsonl line {number}: event {event_id} comes after "
                              f"event {previous_id}: the events were reordered")
            if sha256(event).hexdigest().encode() != stored:
                raise Problem(f"events.jsonl line {number}: event {event_id} was altered: "
                              "its fields no longer match its hash")
            if previous_hash is not None and prev != previous_hash:
                # One line of lookahead tells a swap from a gap.
                following = next(lines, None)
                if following is not None:
                    next_id, _hash, _scoped, next_prev, _event = _parse(*following)
                    if next_prev == previous_hash:
                        raise Problem(f"events.jsonl line {number}: event {next_id} should "
                                      f"follow event {previous_id}, but event {event_id} "
                                      "comes first: the events were reordered")
                raise Problem(f"events.jsonl line {number}: event {event_id} does not follow "
                              f"event {previous_id}: an event between them is missing, or "
                              "one was altered together with its hash")
            signed = by_event.get(event_id)
            if signed is not None and signed != stored:
                raise Problem(f"event {event_id} has hash {stored[:12].decode()}…, but the "
                              f"checkpoint of event {event_id} signed {signed[:12].decode()}…")
            if scoped:
                in_scope += 1
                scoped_ids.update(b"%d\n" % event_id)
            else:
                linking += 1
            previous_id, previous_hash = event_id, stored
    walk.in_scope, walk.linking, walk.last_id = in_scope, linking, previous_id
    return walk


def check_sealed_events(walk: Walk, seal: dict, checkpoints: list) -> None:
    """The events are the ones the portal sealed: from the same first event to the same
    checkpoint, with the same events in scope."""
    sealed = seal["events"]
    first, count = sealed.get("first_id"), (sealed.get("in_scope"), sealed.get("linking"))
    if walk.first_id != first:
        if walk.first_id is None:
            raise Problem(f"events.jsonl holds no events, but the portal sealed {count[0]} "
                          f"events in scope and {count[1]} linking from event {first}: the "
                          "bundle was emptied")
        if first is None:
            raise Problem(f"events.jsonl holds events from event {walk.first_id}, but the "
                          "portal sealed an empty bundle: events were added")
        if walk.first_id > first:
            raise Problem(f"events.jsonl starts at event {walk.first_id}, but the portal "
                          f"sealed the bundle from event {first}: the first events were "
                          "removed")
        raise Problem(f"events.jsonl starts at event {walk.first_id}, before event {first} "
                      "where the portal sealed it: events were added")
    sealed_checkpoint = seal.get("checkpoint")
    head = checkpoints[-1] if checkpoints else None
    if walk.last_id is not None:
        if head is None:
            raise Problem("the bundle holds events but no signed checkpoint")
        if walk.last_id != head["event_id"]:
            raise Problem(f"the events end at event {walk.last_id}, but the checkpoint signs "
                          f"event {head['event_id']}: the chain does not reach it")
    held = ({"event_id": head["event_id"], "hash": head["hash"], "key_id": head["key_id"]}
            if head else None)
    if held != sealed_checkpoint:
        raise Problem("the bundle's checkpoint is not the one the portal sealed it with")
    if walk.scoped_ids.hexdigest() != sealed.get("in_scope_ids_sha256"):
        raise Problem("the in_scope flags of events.jsonl are not the ones the portal "
                      "sealed: which events are in scope was changed")
    if (walk.in_scope, walk.linking) != count:
        raise Problem(f"events.jsonl holds {walk.in_scope} events in scope and "
                      f"{walk.linking} linking, the portal sealed {count[0]} and {count[1]}")
    if walk.file.hexdigest() != seal["files"].get("events.jsonl"):
        raise Problem("events.jsonl is not byte for byte the one the portal sealed")


def check_sealed_files(bundle: zipfile.ZipFile, seal: dict) -> None:
    """Every other file is the one the portal sealed, and there is no other."""
    files = seal["files"]
    for name in sorted(files, key=lambda n: (n != "manifest.json", n)):
        if name == "events.jsonl":
            continue
        try:
            data = bundle.read(name)
        except KeyError:
            raise Problem(f"the bundle has no {name}, which the portal sealed") from None
        if hashlib.sha256(data).hexdigest() != files[name]:
            what = SEALED_AS.get(name, "a file")
            raise Problem(f"{name} ({what}) was altered after the portal sealed the bundle")
    extra = sorted(set(bundle.namelist()) - set(files) - {SEAL})
    if extra:
        raise Problem(f"the bundle holds {', '.join(extra)}, which the portal did not seal")


def verify(path: str, pins: list[str]) -> str:
    pinned = {}
    for value in pins:
        key = load_pinned(value)
        pinned[key_id_of(raw_public(key))] = key
    try:
        bundle = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise Problem(f"{path} is not a readable zip file ({exc})") from None
    with bundle:
        try:
            manifest = json.loads(bundle.read("manifest.json"))
        except (KeyError, ValueError):
            raise Problem("the bundle has no readable manifest.json") from None
        if manifest.get("format") != FORMAT:
            raise Problem("manifest.json does not describe an evidence bundle")
        if manifest.get("version") != VERSION:
            raise Problem(f"manifest.json describes a version {manifest.get('version')} "
                          f"bundle; this verifier checks sealed version {VERSION} bundles "
                          "(download the bundle again)")
        keys = check_keys(read_json_lines(bundle, "public-keys.jsonl"))
        checkpoints = check_checkpoints(read_json_lines(bundle, "checkpoints.jsonl"), keys,
                                        pinned)
        seal = check_seal(bundle, keys, pinned)
        walk = walk_events(bundle, checkpoints)
        check_sealed_events(walk, seal, checkpoints)
        check_sealed_files(bundle, seal)
        counts = manifest.get("events", {})
        if (walk.in_scope, walk.linking) != (counts.get("in_scope"), counts.get("linking")):
            raise Problem(f"manifest.json lists {counts.get('in_scope')} events in scope and "
                          f"{counts.get('linking')} linking, events.jsonl holds "
                          f"{walk.in_scope} and {walk.linking}: events were removed or added")
        if walk.last_id is None:
            # Sealed empty: nothing in its scope was under a checkpoint when it was made.
            return (f"OK: the bundle holds no events; the portal sealed it empty for "
                    f"{seal.get('title')!r}")
        head = checkpoints[-1]
        pin_note = "pinned key" if pinned else "bundled key only; pin it with --pin-key"
        return (f"OK: {walk.in_scope} events in scope and {walk.linking} linking events "
                f"chain to the checkpoint of event {head['event_id']} signed at "
                f"{head['signed_at']} by key {head['key_id']} ({pin_note}); the manifest, "
                f"the report and the scope are as the portal sealed them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a change portal evidence bundle "
                                                 "offline.")
    parser.add_argument("bundle", help="the evidence bundle (.zip) downloaded from the portal")
    parser.add_argument("--pin-key", action="append", default=[], metavar="KEY",
                        help="a public key you trust: a PEM file, a file holding the base64 "
                             "raw key, or the base64 raw key; repeat after a key rotation")
    args = parser.parse_args(argv)
    try:
        print(verify(args.bundle, args.pin_key))
    except Problem as problem:
        print(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
