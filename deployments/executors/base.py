from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from django.conf import settings


class StepFailed(Exception):
    """A step could not be completed; the message says why, for the deployment log."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_artifact(release, into: Path, log: Callable[[str, str], None]) -> Path | None:
    """Copy or download the release's artifact into ``into`` and verify its SHA-256.

    SOP 10.1: only verified artifacts are deployed. A mismatch fails the step before
    anything is switched.
    """
    if not release.artifact_url:
        return None
    parsed = urllib.parse.urlparse(release.artifact_url)
    name = Path(urllib.parse.unquote(parsed.path)).name or "artifact"
    target = Path(into) / name
    if parsed.scheme in ("file", ""):
        source = Path(urllib.parse.unquote(parsed.path))
        if not source.is_file():
            raise StepFailed(f"artifact {source} does not exist")
        shutil.copy2(source, target)
    elif parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(release.artifact_url, timeout=60) as response, \
                    target.open("wb") as fh:
                shutil.copyfileobj(response, fh)
        except OSError as exc:
            raise StepFailed(f"artifact {release.artifact_url} could not be fetched: {exc}") \
                from exc
    else:
        raise StepFailed(f"artifact scheme {parsed.scheme!r} is not supported")
    actual = sha256_of(target)
    if release.artifact_sha256 and actual != release.artifact_sha256:
        target.unlink(missing_ok=True)
        raise StepFailed(f"artifact checksum mismatch: expected {release.artifact_sha256}, "
                         f"got {actual}")
    if release.artifact_sha256:
        log("info", f"artifact {name} verified (SHA-256 {actual[:12]}...)")
    return target


class Executor:
    """Runs one step of one deployment.

    A step interrupted by a dying worker runs again only when ``safe_to_repeat``
    says so; otherwise the deployment waits for on-call (needs attention).
    ``run`` also keeps a journal per step: a step whose effect was recorded as applied
    is not applied again when a resumed run meets it.
    """

    # True: every step may run again after an interruption. A set of step names:
    # those may. Executors that run commands they do not understand say False.
    steps_safe_to_repeat: bool | frozenset[str] = False

    def safe_to_repeat(self, step_name: str) -> bool:
        """Whether an interrupted ``step_name`` may simply run again.

        The application's ``executor_settings["safe_to_repeat"]`` (true, false or a
        list of step names) overrides the executor's own declaration.
        """
        declared = self.settings.get("safe_to_repeat", self.steps_safe_to_repeat)
        if isinstance(declared, bool):
            return declared
        return step_name in set(declared or ())

    def __init__(self, deployment, log: Callable[[str, str], None]) -> None:
        self.deployment = deployment
        self.log = log
        self.settings = deployment.application.executor_settings or {}
        # Resolved configuration for this run (secrets included): memory only.
        self.configuration: dict = {}

    def configuration_environment(self) -> dict[str, str]:
        """The configuration for the deployed process's environment, never for a file or log."""
        if not self.configuration:
            return {}
        return {"PORTAL_CONFIGURATION": json.dumps(self.configuration, sort_keys=True)}

    @property
    def base(self) -> Path:
        d = self.deployment
        return Path(settings.PORTAL_DEPLOY_ROOT) / d.application.slug / d.environment.slug

    @property
    def journal(self) -> Path:
        return self.base / "journal"

    def run(self, step) -> str:
        # Named by the deployment's unique task id as well: ids restart in a new database.
        marker = self.journal / f"{self.deployment.task_id}-{step.pk}.done"
        if marker.exists():
            return json.loads(marker.read_text()).get("detail", "") + " (already applied)"
        handler = getattr(self, f"step_{step.name}", None)
        if handler is None:
            raise StepFailed(f"{type(self).__name__} has no step {step.name!r}")
        delay = float(self.settings.get("step_delay", 0))
        if delay:
            time.sleep(delay)  # slow demo and fault tests: a window in the middle of a step
        detail = handler(step.target) or ""
        self.journal.mkdir(parents=True, exist_ok=True)
        # applied.log counts how many times each step's effect completed.
        with (self.journal / "applied.log").open("a") as fh:
            fh.write(f"{self.deployment.pk} {step.pk} {step.name}\n")
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"detail": detail}))
        os.replace(tmp, marker)
        return detail

    def endpoints(self, targets, slot: str = "live") -> dict[str, tuple[str, int] | None]:
        """Where each target answers HTTP, for health analysis; None when not running."""
        found: dict[str, tuple[str, int] | None] = {}
        for target in targets:
            address = target.address or ""
            if address.startswith("http"):
                parsed = urllib.parse.urlparse(address)
                found[target.name] = (parsed.hostname, parsed.port or 80)
            else:
                found[target.name] = None
        return found
