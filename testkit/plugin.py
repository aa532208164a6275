"""Pytest plugin loaded before Django (``-p testkit.plugin`` in pyproject).

Points the test run at its own embedded PostgreSQL and Redis under var/test on
their own ports, so `make test` works while `make run` is running.
"""

import getpass
import os
import tempfile
from pathlib import Path

import pytest

_base = Path(__file__).resolve().parents[1]
os.environ.setdefault("PORTAL_VAR_DIR", str(_base / "var" / "test"))
os.environ.setdefault("PORTAL_PG_PORT", "54339")
os.environ.setdefault("PORTAL_REDIS_PORT", "63799")


def _paths_under(var: Path) -> dict[str, str]:
    """The run's directories that live under its var directory."""
    store = var / "artifacts"
    return {
        "PORTAL_DEPLOY_ROOT": str(var / "deploy"),
        # Tests keep artifacts in the store or in pytest's temporary directories.
        "PORTAL_ARTIFACT_STORE": str(store),
        "PORTAL_ARTIFACT_SOURCES": ",".join([
            store.as_uri() + "/",
            Path(tempfile.gettempdir(), f"pytest-of-{getpass.getuser()}").as_uri() + "/"]),
    }


# Under pytest-xdist (`make test` runs two processes) each process gets servers of its
# own: gw0 keeps the ports and directory above, gwN moves them by N * 100 and suffixes
# the directory, so no database, Redis queue, worker or deploy root is shared between
# processes. The controller loaded this plugin first and its workers inherit its
# environment: what it derived from the shared directory is derived again here (else
# one process, ending, would stop the demo services another is deploying to).
_xdist = os.environ.get("PYTEST_XDIST_WORKER", "")
if _xdist.startswith("gw") and _xdist != "gw0":
    _n = int(_xdist[2:])
    _shared = _paths_under(Path(os.environ["PORTAL_VAR_DIR"]))
    os.environ["PORTAL_VAR_DIR"] = f"{os.environ['PORTAL_VAR_DIR']}-{_xdist}"
    for _name in ("PORTAL_PG_PORT", "PORTAL_REDIS_PORT"):
        os.environ[_name] = str(int(os.environ[_name]) + 100 * _n)
    _own = _paths_under(Path(os.environ["PORTAL_VAR_DIR"]))
    for _name, _value in _shared.items():
        if os.environ.get(_name) == _value:
            os.environ[_name] = _own[_name]
_var = Path(os.environ["PORTAL_VAR_DIR"])
for _name, _value in _paths_under(_var).items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("DJANGO_DEBUG", "true")
# Test servers and the demo fleet listen on loopback.
os.environ.setdefault("PORTAL_OUTBOUND_ALLOW", "127.0.0.1")
# Test servers skip fsync and synchronous commit for speed (their data is thrown
# away); `make run` and tests of durability run them durable (portal.embedded.durable).
os.environ.setdefault("PORTAL_DURABLE", "false")


@pytest.fixture(scope="module")
def ssh_fleet(tmp_path_factory):
    """Four app hosts (``app-1``...``app-4``) and a bastion: real OpenSSH servers on
    loopback for the module's tests (testkit/sshd.py), stopped after it. No sshd on the
    machine fails the tests with what to install: `make test` installs it (scripts/ensure-sshd)."""
    from testkit.sshd import SshdUnavailable, start_fleet

    try:
        fleet = start_fleet(tmp_path_factory.mktemp("ssh-fleet"), 4, bastion=True)
    except SshdUnavailable as missing:
        what_to_do = str(missing)
    else:
        what_to_do = ""
    if what_to_do:
        pytest.fail(what_to_do, pytrace=False)
    yield fleet
    fleet.stop()
