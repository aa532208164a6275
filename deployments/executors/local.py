"""The `local` executor: releases/<version> directories and atomic `current` symlinks.

Layout under ``PORTAL_DEPLOY_ROOT/<application>/<environment>/``, as Capistrano
does it::

    releases/1.2.3/          one directory per release (VERSION, manifest.json, artifact)
    current -> releases/1.2.3   the release of the environment (switched at the end)
    state                    running | stopped
    targets/<name>/live      blue | green: the slot that takes traffic
    targets/<name>/<slot>/current -> ../../../releases/<version>
    targets/<name>/<slot>/instance.json   the demo service of that slot, when running
    targets/<name>/current -> ../../releases/<version>   what the target serves
    schema.json              migrations applied (the demo application's database)
    backups/<n>.json         what was current before deployment n

With ``{"fleet": "demo"}`` in the application's executor settings each target runs
the demo service (``demo_fleet``) on a loopback port, one instance per slot.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core import clock
from deployments.executors.base import Executor, StepFailed, fetch_artifact
from deployments.inputs import targets as deployment_targets

SLOTS = ("blue", "green")

# Services the local executor can run on loopback ports, by the name an application's
# executor settings give (``{"fleet": "demo"}``). A fleet registers itself at startup
# (the demo fleet: demo.apps); it offers start_instance, stop_instance, instance_info.
FLEETS: dict[str, object] = {}


def register_fleet(name: str, fleet) -> None:
    FLEETS[name] = fleet


def _switch_symlink(link: Path, points_to: Path) -> None:
    """Atomic switch: a new symlink beside the old one, renamed over it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(points_to, tmp)
    os.replace(tmp, link)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class LocalExecutor(Executor):
    # Every step converges (symlinks renamed into place, journal markers): safe to repeat.
    steps_safe_to_repeat = True

    @property
    def release_dir(self) -> Path:
        return self.base / "releases" / self.deployment.release.version

    @property
    def fleet(self):
        return FLEETS.get(self.settings.get("fleet") or "")

    def current_version(self, link: Path | None = None) -> str:
        link = link or self.base / "current"
        if not link.is_symlink():
            return ""
        return Path(os.readlink(link)).name

    def _state(self, where: Path | None = None) -> str:
        try:
            return ((where or self.base) / "state").read_text().strip()
        except FileNotFoundError:
            return ""

    def _set_state(self, state: str, where: Path | None = None) -> None:
        _write_atomic((where or self.base) / "state", state + "\n")

    # --- targets and slots ---------------------------------------------------

    def target_dir(self, target) -> Path:
        return self.base / "targets" / target.name

    def live_slot(self, target) -> str:
        try:
            slot = (self.target_dir(target) / "live").read_text().strip()
        except FileNotFoundError:
            return "blue"
        return slot if slot in SLOTS else "blue"

    def idle_slot(self, target) -> str:
        return "green" if self.live_slot(target) == "blue" else "blue"

    def slot_dir(self, target, slot: str) -> Path:
        return self.target_dir(target) / slot

    def target_version(self, target) -> str:
        return self.current_version(self.target_dir(target) / "current")

    def endpoints(self, targets, slot: str = "live") -> dict[str, tuple[str, int] | None]:
        if not self.fleet:
            return super().endpoints(targets, slot)
        found: dict[str, tuple[str, int] | None] = {}
        for target in targets:
            which = self.live_slot(target) if slot == "live" else self.idle_slot(target)
            info = self.fleet.instance_info(self.slot_dir(target, which))
            found[target.name] = ("127.0.0.1", int(info["port"])) if info else None
        return found

    def _all_targets(self) -> list:
        return deployment_targets(self.deployment)

    # --- the release directory ----------------------------------------------

    def ensure_release(self) -> Path:
        """Lay out releases/<version> once; an existing, complete directory is reused."""
        release = self.deployment.release
        manifest = self.release_dir / "manifest.json"
        if manifest.is_file():
            try:
                recorded = json.loads(manifest.read_text())
            except ValueError:
                recorded = {}
            if recorded.get("artifact_sha256", "") == release.artifact_sha256:
                return self.release_dir
        staging = self.release_dir.with_name(self.release_dir.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        fetch_artifact(release, staging, self.log)
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
        return self.release_dir

    def _point_slot(self, target, slot: str) -> None:
        version = self.deployment.release.version
        _switch_symlink(self.slot_dir(target, slot) / "current",
                        Path("..") / ".." / ".." / "releases" / version)

    def _point_target(self, target) -> None:
        version = self.deployment.release.version
        _switch_symlink(self.target_dir(target) / "current",
                        Path("..") / ".." / "releases" / version)

    def _check_version(self, link: Path, label: str) -> None:
        expected = self.deployment.release.version
        version_file = link / "VERSION"
        if not version_file.is_file() or version_file.read_text().strip() != expected:
            raise StepFailed(f"{label} does not report version {expected}")

    def _check_http(self, target, slot: str) -> str:
        info = self.fleet.instance_info(self.slot_dir(target, slot))
        if not info:
            raise StepFailed(f"{target.name} ({slot} slot) is not running")
        from deployments.health import HttpProber

        healthy, said = HttpProber().health(("127.0.0.1", int(info["port"])))
        if not healthy:
            raise StepFailed(f"{target.name} ({slot} slot): {said}")
        return f"port {info['port']}, {said}"

    # --- SOP 4.1 steps --------------------------------------------------------

    def step_pre_health_check(self, target=None) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        # SOP 10.1: the artifact is fetched and verified before any target is stopped.
        self.ensure_release()
        current = self.current_version()
        if not current:
            return "first deployment here: nothing running yet"
        if not (self.base / "releases" / current).is_dir():
            raise StepFailed(f"current points at releases/{current}, which is missing")
        return f"running version {current} is in place ({self._state() or 'state unknown'})"

    def step_backup(self, target=None) -> str:
        previous = self.current_version()
        record = {"deployment": self.deployment.pk, "previous_version": previous,
                  "targets": {t.name: self.target_version(t) for t in self._all_targets()},
                  "at": clock.now().isoformat()}
        _write_atomic(self.base / "backups" / f"{self.deployment.pk}.json", json.dumps(record))
        return f"recorded previous version {previous or '(none)'}"

    # --- SOP 6: database -------------------------------------------------------

    def _schema(self) -> list[str]:
        try:
            return json.loads((self.base / "schema.json").read_text())
        except (FileNotFoundError, ValueError):
            return []

    def step_backup_database(self, target=None) -> str:
        path = self.base / "backups" / f"{self.deployment.pk}.schema.json"
        _write_atomic(path, json.dumps(self._schema()))
        return f"database backed up to backups/{path.name}"

    def step_maintenance_on(self, target=None) -> str:
        _write_atomic(self.base / "maintenance", f"deployment {self.deployment.pk}\n")
        return "maintenance mode on"

    def step_maintenance_off(self, target=None) -> str:
        (self.base / "maintenance").unlink(missing_ok=True)
        return "maintenance mode off"

    def step_migrate(self, target=None) -> str:
        plan = self.deployment.release.migration_plan or []
        if not plan or self.deployment.kind == "rollback":
            return "no database migrations in this release"
        applied = self._schema()
        new = [m["name"] for m in plan if m["name"] not in applied]
        for migration in plan:
            if migration["name"] in new:
                self.log("info", f"applying {migration['name']} ({migration['kind']})")
        _write_atomic(self.base / "schema.json", json.dumps(applied + new))
        return f"applied {len(new)} migration(s), {len(plan) - len(new)} already applied"

    def step_verify_migrations(self, target=None) -> str:
        applied = set(self._schema())
        missing = [m["name"] for m in self.deployment.release.migration_plan
                   if m["name"] not in applied]
        if missing:
            raise StepFailed("migrations not applied: " + ", ".join(missing))
        return f"{len(self.deployment.release.migration_plan)} migration(s) verified"

    # --- in place: stop, deploy, start, health check ---------------------------

    def step_stop(self, target=None) -> str:
        if target is None:
            if not self.current_version():
                return "nothing to stop"
            self._set_state("stopped")
            return f"stopped {self.current_version()}"
        slot = self.live_slot(target)
        stopped = self.fleet and self.fleet.stop_instance(self.slot_dir(target, slot))
        self._set_state("stopped", self.target_dir(target))
        version = self.target_version(target)
        if not version:
            return "nothing running yet"
        return f"stopped {version}" + (f" ({slot} slot)" if stopped else "")

    def step_deploy(self, target=None) -> str:
        self.ensure_release()
        version = self.deployment.release.version
        if target is None:
            _switch_symlink(self.base / "current", Path("releases") / version)
            return f"current -> releases/{version}"
        self._point_slot(target, self.live_slot(target))
        self._point_target(target)
        return f"{target.name}: current -> releases/{version}"

    def step_start(self, target=None) -> str:
        if target is None:
            self._set_state("running")
            return f"started {self.current_version()}"
        slot = self.live_slot(target)
        self._set_state("running", self.target_dir(target))
        if self.fleet:
            info = self.fleet.start_instance(self.slot_dir(target, slot), self.release_dir,
                                             target.name, env=self.configuration_environment())
            return f"{target.name} serves {info['version']} on port {info['port']}"
        return f"started {self.target_version(target)} on {target.name}"

    def step_health_check(self, target=None) -> str:
        expected = self.deployment.release.version
        if target is None:
            if self.current_version() != expected:
                raise StepFailed(f"current is {self.current_version()!r}, expected {expected!r}")
            self._check_version(self.base / "current", "the running release")
            if self._state() != "running":
                raise StepFailed(f"service state is {self._state()!r}, expected 'running'")
            return f"version {expected} is running and healthy"
        self._check_version(self.target_dir(target) / "current", target.name)
        if self.fleet:
            return f"{target.name} healthy: " + self._check_http(target, self.live_slot(target))
        if self._state(self.target_dir(target)) != "running":
            raise StepFailed(f"{target.name} is not running")
        return f"{target.name} runs {expected}"

    # --- SOP 5.4 blue-green ------------------------------------------------------

    def step_deploy_idle(self, target) -> str:
        self.ensure_release()
        slot = self.idle_slot(target)
        self._point_slot(target, slot)
        if self.fleet:
            info = self.fleet.start_instance(self.slot_dir(target, slot), self.release_dir,
                                             target.name, env=self.configuration_environment())
            return (f"{target.name}: {slot} slot runs {info['version']} on port "
                    f"{info['port']}")
        return f"{target.name}: {slot} slot -> releases/{self.deployment.release.version}"

    def step_health_check_idle(self, target) -> str:
        slot = self.idle_slot(target)
        self._check_version(self.slot_dir(target, slot) / "current", f"{target.name} ({slot})")
        if self.fleet:
            return f"{target.name} {slot} slot healthy: " + self._check_http(target, slot)
        return f"{target.name} {slot} slot holds {self.deployment.release.version}"

    def step_switch(self, target) -> str:
        version = self.deployment.release.version
        live = self.live_slot(target)
        if self.current_version(self.slot_dir(target, live) / "current") == version:
            return f"{target.name}: {live} slot already serves {version}"
        idle = self.idle_slot(target)
        self._check_version(self.slot_dir(target, idle) / "current", f"{target.name} ({idle})")
        _write_atomic(self.target_dir(target) / "live", idle + "\n")
        self._point_target(target)
        self._set_state("running", self.target_dir(target))
        return (f"{target.name}: traffic switched {live} -> {idle}; {live} slot kept for "
                "an instant rollback")

    # --- the end ----------------------------------------------------------------

    def step_finalize(self, target=None) -> str:
        self.ensure_release()
        version = self.deployment.release.version
        _switch_symlink(self.base / "current", Path("releases") / version)
        self._set_state("running")
        pruned = self._prune(keep=int(self.settings.get("keep_releases", 5)))
        detail = f"current -> releases/{version}"
        return detail + (f"; removed {len(pruned)} old release(s)" if pruned else "")

    def _prune(self, keep: int) -> list[str]:
        releases = self.base / "releases"
        if not releases.is_dir():
            return []
        in_use = {self.current_version()}
        for target in self._all_targets():
            for slot in SLOTS:
                in_use.add(self.current_version(self.slot_dir(target, slot) / "current"))
        dirs = sorted((p for p in releases.iterdir() if p.is_dir() and
                       not p.name.endswith(".partial")), key=lambda p: p.stat().st_mtime)
        removable = [p for p in dirs[:-keep] if p.name not in in_use] if keep else []
        for path in removable:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in removable]
