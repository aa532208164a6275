"""Resolving secret references, on the worker only, at deployment time (SOP 7.2).

Values are returned to the caller and never written anywhere: not to the database,
not to the log. Errors name the reference, never a value.
"""

from __future__ import annotations

import os

from configuration.validation import ENV_REFERENCE, VAULT_REFERENCE
from core import outbound
from core.errors import Conflict

VAULT_TIMEOUT = 10


class SecretUnavailable(Conflict):
    code = "secret_unavailable"


class SecretNotAllowed(SecretUnavailable):
    """A saved reference the allow-list no longer covers: it is not resolved."""

    code = "secret_not_allowed"


def resolve_reference(reference: str, *, environ=None) -> str:
    environ = os.environ if environ is None else environ
    match = ENV_REFERENCE.match(reference)
    if match:
        name = match.group(1)
        if name not in environ:
            raise SecretUnavailable(f"{reference}: the variable {name} is not set on the worker")
        return environ[name]
    match = VAULT_REFERENCE.match(reference)
    if match:
        return _vault(reference, match.group(1), match.group(2), environ)
    raise SecretUnavailable(f"{reference!r} is not a secret reference")


def _vault(reference: str, path: str, key: str, environ) -> str:
    """HashiCorp Vault's HTTP API: KV version 2 (data.data) or version 1 (data)."""
    address = environ.get("VAULT_ADDR", "").rstrip("/")
    token = environ.get("VAULT_TOKEN", "")
    if not address or not token:
        raise SecretUnavailable(f"{reference}: VAULT_ADDR and VAULT_TOKEN must be set on "
                                "the worker")
    # Vault is called like every other outbound destination: through the guarded
    # client (a Vault on a private network is named in PORTAL_OUTBOUND_ALLOW).
    try:
        answer = outbound.request("GET", f"{address}/v1/{path}",
                                  headers={"X-Vault-Token": token},
                                  connect_timeout=VAULT_TIMEOUT, read_timeout=VAULT_TIMEOUT)
    except outbound.OutboundError as exc:
        raise SecretUnavailable(f"{reference}: Vault could not be read "
                                f"({type(exc).__name__})") from None
    if answer.status != 200:
        raise SecretUnavailable(f"{reference}: Vault answered HTTP {answer.status}")
    try:
        body = answer.json() or {}
    except ValueError:
        raise SecretUnavailable(f"{reference}: Vault's answer is not JSON") from None
    data = body.get("data") or {}
    if isinstance(data.get("data"), dict):
        data = data["data"]
    if key not in data:
        raise SecretUnavailable(f"{reference}: Vault has no key {key!r} at {path}")
    return str(data[key])


def resolve(value, *, environ=None, secrets: set[str] | None = None):
    """A copy of ``value`` with every reference replaced by what it names; the values
    read are added to ``secrets`` when given."""
    from configuration.validation import is_reference

    if isinstance(value, dict):
        return {k: resolve(v, environ=environ, secrets=secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, environ=environ, secrets=secrets) for v in value]
    if is_reference(value):
        resolved = resolve_reference(value, environ=environ)
        if secrets is not None:
            secrets.add(resolved)
        return resolved
    return value
