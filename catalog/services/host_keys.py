"""Pinned SSH host keys of an environment (SOP 10.1: secure deployment channels).

An administrator pins the key a target or bastion offers, from a known_hosts line
(what ``ssh-keyscan`` prints, checked against the server's own console); the ``ssh``
executor then accepts exactly that key for that host in that environment. Pinning and
removing are audited: a host key is a trust decision, like a grant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from django.db import IntegrityError, transaction

from audit.trail import audit_record
from catalog.models import Environment, HostKey
from core.errors import Conflict, Invalid, Refused

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
HOST = re.compile(r"^(\[[A-Za-z0-9.:_-]{1,200}\]:\d{1,5}|[A-Za-z0-9.:_-]{1,253})$")


def host_pattern(host: str, port: int) -> str:
    """How known_hosts names ``host`` on ``port``."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def fingerprint_of(key_b64: str) -> str:
    """``SHA256:<base64>``, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_known_hosts_line(line: str) -> tuple[list[str], str, str, str]:
    """(hosts, key type, base64 key, comment) of one known_hosts line; Invalid when it
    is not one the portal pins (hashed names, wildcards and markers are refused: a pin
    names its host)."""
    parts = (line or "").strip().split()
    if len(parts) < 3:
        raise Invalid("a known_hosts line is: host key-type base64-key",
                      fields={"line": ["Paste one line as ssh-keyscan prints it."]})
    if parts[0].startswith("@") or parts[0].startswith("|"):
        raise Invalid("markers and hashed host names are not pinned",
                      fields={"line": ["Give the host name or address in clear."]})
    hosts = parts[0].split(",")
    for host in hosts:
        if not HOST.match(host) or "*" in host or "?" in host:
            raise Invalid(f"{host!r} is not a host name, address or [address]:port",
                          fields={"line": ["Give the host name or address in clear."]})
    key_type, key = parts[1], parts[2]
    if key_type not in KEY_TYPES:
        raise Invalid(f"{key_type!r} is not a host key type the portal accepts",
                      fields={"line": [f"Use one of {', '.join(KEY_TYPES)}."]})
    try:
        blob = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the key is not base64", fields={"line": ["The key is not base64."]}) \
            from None
    # The blob starts with its own type, length-prefixed: a key pasted under another
    # type's name is refused here, not at the first connection.
    named = blob[4:4 + int.from_bytes(blob[:4], "big")] if len(blob) > 4 else b""
    expected = "ssh-rsa" if key_type.startswith("rsa-sha2") else key_type
    if named.decode(errors="replace") != expected:
        raise Invalid("the key does not match its type",
                      fields={"line": ["The key does not match its type."]})
    return hosts, key_type, key, " ".join(parts[3:])[:200]


def host_key_pin(*, actor, environment: Environment, line: str) -> list[HostKey]:
    """Pin the key of a known_hosts ``line`` for each host it names, in ``environment``.
    Administrators only; audited (``environment.host_key_pinned``)."""
    if not getattr(actor, "is_superuser", False):
        raise Refused("only an administrator pins SSH host keys", code="not_permitted")
    hosts, key_type, key, comment = parse_known_hosts_line(line)
    fingerprint = fingerprint_of(key)
    pinned = []
    try:
        with transaction.atomic():
            for host in hosts:
                row = HostKey.objects.create(environment=environment, host=host,
                                             key_type=key_type, key=key,
                                             fingerprint=fingerprint, comment=comment,
                                             added_by=actor)
                audit_record(actor=actor, action="environment.host_key_pinned", obj=environment,
                             environment=environment.slug,
                             after={"host": host, "key_type": key_type,
                                    "fingerprint": fingerprint})
                pinned.append(row)
    except IntegrityError:
        raise Conflict(f"that key is already pinned for {', '.join(hosts)} in "
                       f"{environment.name}", code="already_pinned") from None
    return pinned


def host_key_remove(*, actor, host_key: HostKey, reason: str = "") -> None:
    """Unpin a key (the server was rebuilt, the key rotated). Administrators; audited."""
    if not getattr(actor, "is_superuser", False):
        raise Refused("only an administrator removes SSH host keys", code="not_permitted")
    environment = host_key.environment
    with transaction.atomic():
        HostKey.objects.filter(pk=host_key.pk).delete()
        audit_record(actor=actor, action="environment.host_key_removed", obj=environment,
                     environment=environment.slug,
                     before={"host": host_key.host, "key_type": host_key.key_type,
                             "fingerprint": host_key.fingerprint}, reason=reason)

