"""Release registration: an immutable (application, version) with its artifact."""

from __future__ import annotations

import re
from datetime import datetime

from django.db import IntegrityError, transaction

from audit.trail import System, audit_record
from catalog.models import Application, Release
from catalog.permissions import environment_permissions
from catalog.services.artifacts import artifact_display, artifact_source_check
from core.errors import Conflict, Invalid, Refused

RELEASE_FIELDS = ("artifact_url", "artifact_sha256", "commit_sha", "committed_at", "notes")


def _release_snapshot(release: Release) -> dict:
    return {
        "application": release.application.slug,
        "version": release.version,
        **{name: getattr(release, name) for name in RELEASE_FIELDS},
    }


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _artifact_check(artifact_url: str, artifact_sha256: str) -> None:
    if artifact_sha256 and not SHA256_HEX.match(artifact_sha256):
        raise Invalid("artifact_sha256: not a SHA-256 digest", fields={
            "artifact_sha256": ["A SHA-256 digest is 64 hex characters."]})
    if not artifact_url:
        return
    artifact_source_check(url=artifact_url)
    if not artifact_sha256:
        raise Invalid("artifact_sha256: a release with an artifact carries its SHA-256",
                      code="artifact_digest_missing", fields={"artifact_sha256": [
                          "Give the artifact's SHA-256: it is checked before deployment."]})


def release_register(
    *,
    actor,
    application: Application,
    version: str,
    artifact_url: str = "",
    artifact_sha256: str = "",
    commit_sha: str = "",
    committed_at: datetime | None = None,
    notes: str = "",
) -> tuple[Release, bool]:
    """Register a release; the same body again returns the existing one (created False).

    Releases are immutable: the same version with different content is a conflict.
    Only people (and CI accounts) who may request changes somewhere register them:
    a version claimed by anyone else would lock CI out of it.
    """
    if not isinstance(actor, System) and not any(
            "request_change" in codes for codes in environment_permissions(actor).values()):
        raise Refused("you may not register releases", code="not_permitted")
    artifact_url = (artifact_url or "").strip()
    artifact_sha256 = (artifact_sha256 or "").strip().lower()
    try:
        _artifact_check(artifact_url, artifact_sha256)
    except Invalid as exc:
        # Recorded in its own transaction: an attempt to register an untrusted
        # artifact is worth an auditor's attention even though nothing was created.
        with transaction.atomic():
            audit_record(actor=actor, action="release.refused", object_type="release",
                         object_repr=f"{application.slug} {version}"[:300],
                         after={"code": exc.code,
                                "artifact_url": artifact_display(artifact_url)},
                         reason=exc.detail)
        raise
    wanted = {
        "artifact_url": artifact_url,
        "artifact_sha256": artifact_sha256,
        "commit_sha": commit_sha,
        "committed_at": committed_at,
        "notes": notes,
    }
    existing = Release.objects.filter(application=application, version=version).first()
    if existing is None:
        try:
            with transaction.atomic():
                release = Release.objects.create(
                    application=application, version=version, created_by=actor, **wanted
                )
                audit_record(actor=actor, action="release.registered", obj=release,
                             after=_release_snapshot(release))
            return release, True
        except IntegrityError:
            # Registered by a concurrent request between our read and insert.
            existing = Release.objects.get(application=application, version=version)
    if any(getattr(existing, k) != v for k, v in wanted.items()):
        raise Conflict(
            f"{application.slug} {version} is already registered with different content; "
            "releases are immutable, register a new version",
            code="release_exists",
        )
    return existing, False
