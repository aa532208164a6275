"""Pytest plugin loaded before Django (``-p portal.testing.plugin`` in pyproject).

Points the test run at its own embedded PostgreSQL and Redis under var/test on
their own ports, so `make test` works while `make run` is running.
"""

import os
from pathlib import Path

_base = Path(__file__).resolve().parents[2]
os.environ.setdefault("PORTAL_VAR_DIR", str(_base / "var" / "test"))
_var = Path(os.environ["PORTAL_VAR_DIR"])
os.environ.setdefault("PORTAL_PG_PORT", "54339")
os.environ.setdefault("PORTAL_REDIS_PORT", "63799")
os.environ.setdefault("PORTAL_DEPLOY_ROOT", str(_var / "deploy"))
os.environ.setdefault("DJANGO_DEBUG", "true")
# Test servers skip fsync and synchronous commit for speed (their data is thrown
# away); `make run` and tests of durability run them durable (portal.embedded.durable).
os.environ.setdefault("PORTAL_DURABLE", "false")
