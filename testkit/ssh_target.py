#!/usr/bin/env python3
"""What an application server's own deploy scripts do, for the SSH test hosts.

Runs on a test host (an sshd of testkit/sshd.py) as the host's user, with Debian's
python3 and only the standard library; the host's disk is $PORTAL_TARGET_ROOT::

    releases/<version>/   VERSION and the artifact (a demo_fleet behaviour file)
    current -> releases/<version>
    instance.json         the running demo service (demo_fleet), on HOST:PORT
    applied.log           one line per step that changed something: "<step> <version>"

    ssh_target.py deploy ARTIFACT VERSION [--hold]   install and switch current
    ssh_target.py stop                               stop the service
    ssh_target.py start NAME HOST PORT               start the service of current
    ssh_target.py backup                             record what current is
    ssh_target.py deploy-idle ARTIFACT VERSION NAME HOST PORT
                                                     blue-green: install the release and
                                                     run it beside the live one, on PORT
    ssh_target.py check HOST PORT VERSION            the service on PORT serves VERSION
    ssh_target.py switch NAME HOST PORT              current -> the idle release, served
                                                     on the live PORT; the idle one stays

With ``--hold`` the deploy writes "deploy-begin <version>" to applied.log, then waits
for a file named ``release-hold`` to disappear from the root before it switches: a test
kills the worker while a step is in the middle of its work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("PORTAL_TARGET_ROOT", "."))
HERE = Path(__file__).resolve().parent
# demo_fleet beside this script (a copy handed to the hosts) or in the repository.
PYTHONPATH = f"{HERE}:{HERE.parent}"


def _applied(line: str) -> None:
    with (ROOT / "applied.log").open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def _instance(file: str = "instance.json") -> dict | None:
    try:
        info = json.loads((ROOT / file).read_text())
        return info if _alive(int(info["pid"])) else None
    except (OSError, ValueError, KeyError):
        return None


def install(artifact: str, version: str) -> Path:
    release = ROOT / "releases" / version
    release.mkdir(parents=True, exist_ok=True)
    if artifact and not os.path.isabs(artifact):
        artifact = str(ROOT / artifact)  # the portal's upload_dir, relative to this host
    if artifact:
        shutil.copyfile(artifact, release / Path(artifact).name)
    (release / "VERSION").write_text(version + "\n")
    return release


def _point(link_name: str, version: str) -> None:
    link = ROOT / f"{link_name}.tmp"
    if link.is_symlink():
        link.unlink()
    os.symlink(Path("releases") / version, link)
    os.replace(link, ROOT / link_name)


def deploy(artifact: str, version: str, hold: bool) -> None:
    if hold:
        _applied(f"deploy-begin {version}")
        print(f"installing {version}, holding before the switch", flush=True)
        deadline = time.monotonic() + 120
        while (ROOT / "release-hold").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    install(artifact, version)
    _point("current", version)
    _applied(f"deploy {version}")
    print(f"current -> releases/{version}")


def stop(file: str = "instance.json") -> None:
    info = _instance(file)
    (ROOT / file).unlink(missing_ok=True)
    if info:
        try:
            os.kill(int(info["pid"]), signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(int(info["pid"])):
            time.sleep(0.05)
        _applied(f"stop {info.get('version')}")
        print(f"stopped {info.get('version')}")
    else:
        print("nothing was running")


def start(name: str, host: str, port: str, *, link: str = "current",
          file: str = "instance.json") -> None:
    if _instance(file):
        stop(file)
    release = (ROOT / link).resolve()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH}
    subprocess.Popen([sys.executable, "-m", "demo_fleet", "--release-dir", str(release),
                      "--instance-file", str(ROOT / file), "--name", name,
                      "--host", host, "--ports", f"{port}-{port}"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = _instance(file)
        if info and Path(info.get("release_dir", "")) == release:
            _applied(f"start {info['version']}")
            print(f"{name} serves {info['version']} on {host}:{port}")
            return
        time.sleep(0.05)
    sys.exit(f"the service of {name} did not start")


def deploy_idle(artifact: str, version: str, name: str, host: str, port: str) -> None:
    install(artifact, version)
    _point("idle", version)
    start(name, host, port, link="idle", file="instance-idle.json")


def check(host: str, port: str, version: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as answer:
        said = json.load(answer)
    if said.get("version") != version:
        sys.exit(f"{host}:{port} serves {said.get('version')}, not {version}")
    print(f"{host}:{port} serves {version}: {said.get('status')}")


def switch(name: str, host: str, port: str) -> None:
    version = Path(os.readlink(ROOT / "idle")).name
    _point("current", version)
    start(name, host, port)
    _applied(f"switch {version}")


def backup() -> None:
    current = ROOT / "current"
    version = Path(os.readlink(current)).name if current.is_symlink() else ""
    (ROOT / "backup.txt").write_text(version + "\n")
    print(f"recorded {version or '(nothing yet)'}")


def main(argv: list[str]) -> None:
    command, *args = argv or ["help"]
    if command == "deploy":
        hold = "--hold" in args
        args = [a for a in args if a != "--hold"]
        deploy(args[0] if args else "", args[1] if len(args) > 1 else "", hold)
    elif command == "stop":
        stop()
    elif command == "start":
        start(*args[:3])
    elif command == "backup":
        backup()
    elif command == "deploy-idle":
        deploy_idle(*args[:5])
    elif command == "check":
        check(*args[:3])
    elif command == "switch":
        switch(*args[:3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
