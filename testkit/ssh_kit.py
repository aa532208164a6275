"""What the SSH test hosts run, handed to them: their deploy script (testkit/ssh_target.py),
the demo service it starts (demo_fleet) and the deploy verifier (tools/verify_deploy.py).

Copied into the fleet's served directory, which the hosts' account can read (the
repository may lie in a directory it cannot enter, such as root's home); the commands
run with Debian's python3.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"


def install_kit(fleet) -> tuple[str, str]:
    """Copy the kit next to the hosts; returns the commands (deploy script, verifier)."""
    into = Path(fleet.hosts[0].root).parent.parent / "kit"
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(REPO / "demo_fleet", into / "demo_fleet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "testkit" / "ssh_target.py", into / "ssh_target.py")
    shutil.copy(REPO / "tools" / "verify_deploy.py", into / "verify_deploy.py")
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return f"{PYTHON} {into}/ssh_target.py", f"{PYTHON} {into}/verify_deploy.py"


def standard_commands(kit: str, http_port: int) -> dict[str, str]:
    """The ssh executor's commands for the kit: back up, stop, install and start."""
    return {"backup": f"{kit} backup", "stop": f"{kit} stop",
            "deploy": f"{kit} deploy {{artifact}} {{version}}",
            "start": f"{kit} start {{target}} {{host}} {http_port}"}


def free_port_on(addresses: list[str]) -> int:
    """A port free on every host's address (each demo service listens on its own host)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every host")
