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
5. the counts agree with manifest.json.

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
PREV = b',"prev_hash":"'


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


def _lines(handle, size: int = 1 << 20):
    """The lines of a zip entry, read in 1 MiB pieces (faster than readline)."""
    rest = b""
    while True:
        piece = handle.read(size)
        if not piece:
            break
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


def walk_events(bundle: zipfile.ZipFile, checkpoints: list) -> tuple[int, int, int | None]:
    """(in scope, linking, last event id) after walking events.jsonl once, streaming."""
    by_event = {body["event_id"]: body["hash"].encode() for body in checkpoints}
    in_scope = linking = 0
    previous_id = previous_hash = None
    sha256 = hashlib.sha256
    try:
        handle = bundle.open("events.jsonl")
    except KeyError:
        raise Problem("the bundle has no events.jsonl") from None
    with handle:
        lines = enumerate(_lines(handle), start=1)
        for number, line in lines:
            event_id, stored, scoped, prev, event = _parse(number, line)
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
            else:
                linking += 1
            previous_id, previous_hash = event_id, stored
    return in_scope, linking, previous_id


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
        if manifest.get("format") != FORMAT or manifest.get("version") != 1:
            raise Problem("manifest.json does not describe a version 1 evidence bundle")
        keys = check_keys(read_json_lines(bundle, "public-keys.jsonl"))
        checkpoints = check_checkpoints(read_json_lines(bundle, "checkpoints.jsonl"), keys,
                                        pinned)
        in_scope, linking, last_id = walk_events(bundle, checkpoints)
        counts = manifest.get("events", {})
        if (in_scope, linking) != (counts.get("in_scope"), counts.get("linking")):
            raise Problem(f"manifest.json lists {counts.get('in_scope')} events in scope and "
                          f"{counts.get('linking')} linking, events.jsonl holds {in_scope} "
                          f"and {linking}: events were removed or added")
        if last_id is None:
            return "OK: the bundle holds no events"
        if not checkpoints:
            raise Problem("the bundle holds events but no signed checkpoint")
        head = checkpoints[-1]
        if last_id != head["event_id"]:
            raise Problem(f"the events end at event {last_id}, but the checkpoint signs "
                          f"event {head['event_id']}: the chain does not reach it")
        pin_note = "pinned key" if pinned else "bundled key only; pin it with --pin-key"
        return (f"OK: {in_scope} events in scope and {linking} linking events chain to the "
                f"checkpoint of event {head['event_id']} signed at {head['signed_at']} by "
                f"key {head['key_id']} ({pin_note})")


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
