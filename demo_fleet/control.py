"""Starting and stopping demo fleet instances; every call is safe to repeat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

INSTANCE_FILE = "instance.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def instance_info(instance_dir: Path) -> dict | None:
    """``{"pid", "port", "version", "release_dir"}`` of a live instance, else None."""
    try:
        info = json.loads((Path(instance_dir) / INSTANCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _alive(int(info.get("pid", 0))):
        return None
    return info


# What a Python program needs from the starting process's environment to run.
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH",
                    "VIRTUAL_ENV")


def _base_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in BASE_ENVIRONMENT if name in os.environ}


def start_instance(instance_dir: Path, release_dir: Path, name: str,
                   timeout: float = 15.0, env: dict[str, str] | None = None) -> dict:
    """Run an instance of ``release_dir`` in ``instance_dir``; keep a matching live one."""
    instance_dir = Path(instance_dir)
    instance_dir.mkdir(parents=True, exist_ok=True)
    release_dir = Path(release_dir).resolve()
    info = instance_info(instance_dir)
    if info and Path(info.get("release_dir", "")) == release_dir:
        return info
    stop_instance(instance_dir)
    # `make run` keeps the fleet on ports of its own (PORTAL_DEMO_FLEET_PORTS): the only
    # loopback ports its outbound allow-list names.
    ports = os.environ.get("PORTAL_DEMO_FLEET_PORTS", "").strip()
    # A session of its own: the fleet outlives the worker that started it.
    subprocess.Popen(
        [sys.executable, "-m", "demo_fleet", "--release-dir", str(release_dir),
         "--instance-file", str(instance_dir / INSTANCE_FILE), "--name", name,
         *(["--ports", ports] if ports else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
        # The configuration (secrets resolved) reaches the service in memory only, and
        # nothing of the worker's own environment (its secret key, database URL) does.
        env=dict(_base_environment(), **(env or {})),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = instance_info(instance_dir)
        if info and Path(info.get("release_dir", "")) == release_dir:
            return info
        time.sleep(0.05)
    raise RuntimeError(f"the demo service for {name} did not start within {timeout:.0f} s")


def stop_instance(instance_dir: Path, timeout: float = 5.0) -> bool:
    """Stop the instance in ``instance_dir``; True if one was running."""
    path = Path(instance_dir) / INSTANCE_FILE
    info = instance_info(instance_dir)
    path.unlink(missing_ok=True)  # the instance's watchdog exits once its file is gone
    if not info:
        return False
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_all(root: Path) -> int:
    """Stop every instance under ``root`` (tests and `make clean` use it)."""
    stopped = 0
    for path in Path(root).rglob(INSTANCE_FILE):
        stopped += stop_instance(path.parent)
    return stopped


def suspend_all(root: Path, record: Path) -> int:
    """Stop every instance under ``root``, noting what ran where for ``resume_all``."""
    running = []
    for path in Path(root).rglob(INSTANCE_FILE):
        info = instance_info(path.parent)
        if info:
            running.append({"instance_dir": str(path.parent),
                            "release_dir": info.get("release_dir", ""),
                            "name": info.get("name") or path.parent.parent.name})
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(running))
    return stop_all(root)


def resume_all(record: Path) -> int:
    """Start again what ``suspend_all`` stopped, where its release is still there."""
    try:
        running = json.loads(record.read_text())
    except (OSError, ValueError):
        return 0
    started = 0
    for row in running:
        if Path(row.get("release_dir", "")).is_dir():
            start_instance(Path(row["instance_dir"]), Path(row["release_dir"]), row["name"])
            started += 1
    record.unlink(missing_ok=True)
    return started
