"""Making the history in the background of `make run`, and the banner pages show
meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings


def marker() -> Path:
    """Present while a background run makes the history: pages show a banner."""
    return Path(settings.PORTAL_VAR_DIR) / "demo-history.making"


def start_in_background(*, password: str, env: dict) -> subprocess.Popen:
    """``manage.py seed_demo --history`` in a process of its own, its output in a log;
    ``PORTAL_DEMO_HISTORY_SIZE=small`` makes the short history the tests use."""
    marker().parent.mkdir(parents=True, exist_ok=True)
    marker().write_text(str(os.getpid()))
    log = (Path(settings.PORTAL_VAR_DIR) / "demo-history.log").open("w")
    try:
        return subprocess.Popen(
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "seed_demo",
             "--history", "--password", password,
             "--history-size", env.get("PORTAL_DEMO_HISTORY_SIZE", "full")],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def banner(request) -> dict:
    """Context processor: whether the demo history is still being made."""
    return {"demo_history_making": marker().exists()}
