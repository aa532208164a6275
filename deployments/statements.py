"""Deploy statements: the portal's signed word that a deployment was approved.

For each run the worker signs, with the portal's Ed25519 key (the audit checkpoint key,
rotated the same way: ``manage.py audit_rotate_key``), a small statement: application,
environment, version, artifact name and SHA-256, the change, its fingerprint, who
approved which gate, and a not-after time. It travels to the target with the artifact
(the ``ssh`` executor) or in a header (the ``webhook`` executor, ``X-Deploy-Statement``),
and ``tools/verify_deploy.py`` on the target refuses to switch without a statement that
verifies with the pinned public key, for this environment and this very artifact.

Wire form (``statement.json`` on a target)::

    {"statement": {"v": 1, "kind": "change-portal-deploy-statement", "application": …,
                   "environment": …, "version": …, "artifact_name": …,
                   "artifact_sha256": …, "change_id": 12, "change": "CR-12",
                   "fingerprint": …, "approvers": [{"user": …, "gate": …}],
                   "gates": […], "purpose": "deploy" | "rollback", "authorized_by": …,
                   "deployment": 44, "issued_at": …, "not_after": …, "key_id": …},
     "signature": "<base64 Ed25519 signature of the statement's canonical JSON>"}

The canonical JSON is ``json.dumps(statement, sort_keys=True, separators=(",", ":"))``,
as for audit checkpoints. A rollback has no change: it carries ``purpose: rollback`` and
who ordered it (``authorized_by``), since on-call's rollback is the SOP's answer to a
failing release and a target must not refuse it.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from datetime import UTC, timedelta
from pathlib import Path

from django.conf import settings

from audit.checkpoints import canonical_checkpoint, signing_key
from core import clock
from deployments.inputs import approval_of

KIND = "change-portal-deploy-statement"
VERSION = 1
HEADER = "X-Deploy-Statement"


def _when(moment) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def artifact_name(release) -> str:
    if not release.artifact_url:
        return ""
    path = urllib.parse.urlparse(release.artifact_url).path
    return Path(urllib.parse.unquote(path)).name or "artifact"


def statement_ttl() -> int:
    """Seconds a statement stays valid (``PORTAL_DEPLOY_STATEMENT_TTL``); a long run
    signs a fresh one before its statement runs out."""
    return int(getattr(settings, "PORTAL_DEPLOY_STATEMENT_TTL", 3600))


def statement_body(deployment, *, now=None) -> dict:
    """What the portal vouches for about ``deployment``, unsigned."""
    now = now or clock.now()
    release = deployment.release
    approval = approval_of(deployment)
    rollback = deployment.kind == "rollback"
    starter = getattr(deployment.started_by, "username", "") if deployment.started_by_id \
        else ""
    return {
        "v": VERSION, "kind": KIND,
        "application": deployment.application.slug,
        "environment": deployment.environment.slug,
        "version": release.version,
        "artifact_name": artifact_name(release),
        "artifact_sha256": release.artifact_sha256 or "",
        "change_id": approval.get("change_id"),
        "change": approval.get("change", ""),
        "fingerprint": approval.get("fingerprint", ""),
        "approvers": approval.get("approvers", []),
        "gates": approval.get("gates", []),
        "purpose": "rollback" if rollback else "deploy",
        "authorized_by": starter or ("automatic rollback" if rollback else ""),
        "deployment": deployment.pk,
        "issued_at": _when(now),
        "not_after": _when(now + timedelta(seconds=statement_ttl())),
    }


def statement_sign(deployment, *, now=None) -> dict:
    """The signed statement for ``deployment`` in wire form."""
    key = signing_key()
    body = {**statement_body(deployment, now=now), "key_id": key.key_id}
    signature = base64.b64encode(key.private.sign(canonical_checkpoint(body))).decode()
    return {"statement": body, "signature": signature}


def statement_bytes(wire: dict) -> bytes:
    return json.dumps(wire, sort_keys=True, indent=1).encode() + b"\n"


def statement_header(wire: dict) -> str:
    """The statement for an HTTP header: base64 of its compact JSON."""
    return base64.b64encode(json.dumps(wire, sort_keys=True,
                                       separators=(",", ":")).encode()).decode()
