"""The `local` executor: releases/<version> directories and an atomic `current` symlink.

Layout under ``PORTAL_DEPLOY_ROOT/<application>/<environment>/``, as Capistrano
does it::

    releases/1.2.3/      one directory per release (VERSION, manifest.json, artifact)
    current -> releases/1.2.3
    state                running | stopped
    backups/<n>.json     what was current before deployment n
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from deployments.executors.base import Executor, StepFailed


class LocalExecutor(Executor):
    @property
    def base(self) -> Path:
        d = self.deployment
        return Path(settings.PORTAL_DEPLOY_ROOT) / d.application.slug / d.environment.slug

    @property
    def release_dir(self) -> Path:
        return self.base / "releases" / self.deployment.release.version

    def current_version(self) -> str:
        link = self.base / "current"
        if not link.is_symlink():
            return ""
        return Path(os.readlink(link)).name

    def _state(self) -> str:
        try:
            return (self.base / "state").read_text().strip()
        except FileNotFoundError:
            return ""

    def _set_state(self, state: str) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / "state.tmp"
        tmp.write_text(state + "\n")
        os.replace(tmp, self.base / "state")

    # SOP 4.1 phase 1: pre-deployment health check.
    def step_pre_health_check(self) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        current = self.current_version()
        if not current:
            return "first deployment here: nothing running yet"
        if not (self.base / "releases" / current).is_dir():
            raise StepFailed(f"current points at releases/{current}, which is missing")
        return f"running version {current} is in place ({self._state() or 'state unknown'})"

    def step_stop(self) -> str:
        if not self.current_version():
            return "nothing to stop"
        self._set_state("stopped")
        return f"stopped {self.current_version()}"

    def step_backup(self) -> str:
        previous = self.current_version()
        backups = self.base / "backups"
        backups.mkdir(parents=True, exist_ok=True)
        record = {"deployment": self.deployment.pk, "previous_version": previous,
                  "at": timezone.now().isoformat()}
        (backups / f"{self.deployment.pk}.json").write_text(json.dumps(record))
        return f"recorded previous version {previous or '(none)'}"

    def step_deploy(self) -> str:
        release = self.deployment.release
        staging = self.release_dir.with_name(self.release_dir.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        if release.artifact_url:
            self._fetch_artifact(release, staging)
        (staging / "VERSION").write_text(release.version + "\n")
        (staging / "manifest.json").write_text(json.dumps({
            "application": release.application.slug,
            "version": release.version,
            "commit_sha": release.commit_sha,
            "artifact_sha256": release.artifact_sha256,
            "deployment": self.deployment.pk,
        }))
        if self.release_dir.exists():
            shutil.rmtree(self.release_dir)
        os.replace(staging, self.release_dir)
        # Atomic switch: a new symlink beside the old one, renamed over it.
        tmp_link = self.base / "current.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(Path("releases") / release.version, tmp_link)
        os.replace(tmp_link, self.base / "current")
        return f"current -> releases/{release.version}"

    def _fetch_artifact(self, release, into: Path) -> None:
        parsed = urllib.parse.urlparse(release.artifact_url)
        if parsed.scheme not in ("file", ""):
            # Remote artifacts are fetched by the command and webhook executors.
            self.log("info", f"artifact {release.artifact_url} is referenced, not copied")
            return
        source = Path(urllib.parse.unquote(parsed.path))
        if not source.is_file():
            raise StepFailed(f"artifact {source} does not exist")
        digest = hashlib.sha256()
        with source.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        # SOP 10.1: only verified artifacts are deployed.
        if release.artifact_sha256 and digest.hexdigest() != release.artifact_sha256:
            raise StepFailed(
                f"artifact checksum mismatch: expected {release.artifact_sha256}, "
                f"got {digest.hexdigest()}"
            )
        shutil.copy2(source, into / source.name)

    def step_migrate(self) -> str:
        return "no database migrations in this release"

    def step_start(self) -> str:
        self._set_state("running")
        return f"started {self.current_version()}"

    def step_health_check(self) -> str:
        expected = self.deployment.release.version
        if self.current_version() != expected:
            raise StepFailed(f"current is {self.current_version()!r}, expected {expected!r}")
        version_file = self.base / "current" / "VERSION"
        if not version_file.is_file() or version_file.read_text().strip() != expected:
            raise StepFailed("the running release does not report the deployed version")
        if self._state() != "running":
            raise StepFailed(f"service state is {self._state()!r}, expected 'running'")
        return f"version {expected} is running and healthy"
