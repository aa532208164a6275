"""Pytest plugin loaded before Django (``-p portal.testing.plugin`` in pyproject).

Points the test run at its own embedded PostgreSQL and Redis under var/test on
their own ports, so `make test` works while `make run` is running.
"""

import getpass
import os
import tempfile
from pathlib import Path

_base = Path(__file__).resolve().parents[2]
os.environ.setdefault("PORTAL_VAR_DIR", str(_base / "var" / "test"))
_var = Path(os.environ["PORTAL_VAR_DIR"])
os.environ.setdefault("PORTAL_PG_PORT", "54339")
os.environ.setdefault("PORTAL_REDIS_PORT", "63799")
os.environ.setdefault("PORTAL_DEPLOY_ROOT", str(_var / "deploy"))
os.environ.setdefault("DJANGO_DEBUG", "true")
# Test servers and the demo fleet listen on loopback.
os.environ.setdefault("PORTAL_OUTBOUND_ALLOW", "127.0.0.1")
# Tests keep artifacts in the store or in pytest's temporary directories.
os.environ.setdefault("PORTAL_ARTIFACT_STORE", str(_var / "artifacts"))
os.environ.setdefault("PORTAL_ARTIFACT_SOURCES", ",".join([
    Path(os.environ["PORTAL_ARTIFACT_STORE"]).as_uri() + "/",
    Path(tempfile.gettempdir(), f"pytest-of-{getpass.getuser()}").as_uri() + "/"]))
# Test servers skip fsync and synchronous commit for speed (their data is thrown
# away); `make run` and tests of durability run them durable (portal.embedded.durable).
os.environ.setdefault("PORTAL_DURABLE", "false")
