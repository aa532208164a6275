"""gunicorn reads this file from its working directory (the image's /app) on start.

Prometheus metrics with several worker processes: each worker writes what it observes
(request latency) to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any worker
adds up every process's files (``reporting.prometheus``). The directory must be set
before the workers import the portal, be private to this gunicorn, and start empty.
docs/observability.md.
"""

import os
import shutil
import tempfile
from pathlib import Path

_own_directory = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_directory = tempfile.mkdtemp(prefix="portal-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_directory


def on_starting(server):
    """Files left by an earlier run would add its counts to this one's."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_directory:
        shutil.rmtree(_own_directory, ignore_errors=True)
