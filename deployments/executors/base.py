from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from deployments.inputs import executor_settings

# Variables of the worker a deployed command or process may see (SOP 10.2): what a
# program needs to run, nothing of the portal's own settings. PORTAL_DEPLOY_ENV_PASSTHROUGH
# adds names; the executor settings' "env" and the resolved configuration come on top.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES",
                   "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM")


def passthrough_environment() -> dict[str, str]:
    """The part of the worker's environment a deployed command inherits."""
    names = PASSTHROUGH_ENV + tuple(getattr(settings, "PORTAL_DEPLOY_ENV_PASSTHROUGH", ()))
    return {name: os.environ[name] for name in names if name in os.environ}


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

    SOP 10.1: only verified artifacts from trusted sources are deployed. The source is
    checked again here (``catalog.services.artifact_source_check``), downloads go
    through ``core.outbound``, and a missing or mismatching digest fails the step
    before anything is switched. The log names the artifact, its source and digest.
    """
    if not release.artifact_url:
        return None
    from catalog.services import artifact_display, artifact_source_check
    from core import outbound
    from core.errors import Invalid

    shown = artifact_display(release.artifact_url)
    expected = release.artifact_sha256
    parsed = urllib.parse.urlparse(release.artifact_url)
    name = Path(urllib.parse.unquote(parsed.path)).name or "artifact"
    if not expected:
        raise StepFailed(f"artifact {name} from {shown} has no SHA-256 to be verified "
                         "against; not deployed")
    try:
        source = artifact_source_check(url=release.artifact_url)
    except Invalid as exc:
        why = (exc.fields or {}).get("artifact_url", [exc.detail])[0]
        raise StepFailed(f"artifact {name} from {shown} refused: {why}") from None
    log("info", f"fetching artifact {name} from {shown} (expected SHA-256 {expected})")
    target = Path(into) / name
    if parsed.scheme == "file":
        if not Path(source).is_file():
            raise StepFailed(f"artifact {name} does not exist at {shown}")
        shutil.copyfile(source, target)  # the checked real path, not the link
    else:
        try:
            with target.open("wb") as fh:
                answer = outbound.request(
                    "GET", release.artifact_url, sink=fh,
                    max_bytes=int(getattr(settings, "PORTAL_ARTIFACT_MAX_BYTES", 2 << 30)),
                    total_timeout=3600)
        except outbound.OutboundError as exc:
            target.unlink(missing_ok=True)
            raise StepFailed(f"artifact {name} could not be fetched from {shown}: {exc}") \
                from None
        if answer.status != 200:
            target.unlink(missing_ok=True)
            raise StepFailed(f"artifact {name}: {shown} answered HTTP {answer.status}")
    actual = sha256_of(target)
    if actual != expected:
        target.unlink(missing_ok=True)
        raise StepFailed(f"artifact checksum mismatch: {name} from {shown} has SHA-256 "
                         f"{actual}, the release expects {expected}; not deployed")
    log("info", f"artifact {name} from {shown} verified: SHA-256 {actual}")
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
        # The settings kept on the deployment when it was made: what was approved.
        self.settings = executor_settings(deployment)
        # Resolved configuration for this run (secrets included): memory only.
        self.configuration: dict = {}
        # The secret values this run resolved; the engine hands the run's own set, whose
        # values are masked in every log line, step detail and reason.
        self.secrets: set = set()

    def close(self) -> None:
        """The run is over: let go of what was kept open for it (connections)."""

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
