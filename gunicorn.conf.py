"""gunicorn reads this file from its working directory (the image's /app) on start.

Prometheus metrics with several worker processes: each worker writes what it observes
(request latency) to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any worker
adds up every process's files (``reporting.prometheus``). The directory must be set
before the workers import the portal, be private to this gunicorn, and start empty.
docs/observability.md.

It also keeps database connections open between requests (below).
"""

import gc
import os
import shutil
import tempfile
from pathlib import Path

# Each worker thread keeps its database connection between requests (opening one per
# request costs PostgreSQL a new backend process each time); Django checks it before
# reuse (CONN_HEALTH_CHECKS), so a restarted database heals at the next request.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "300")

# Worker processes and threads (`make run` and the image read them here; gunicorn's
# command line overrides them). Measured on two cores (docs/benchmarks.md, "Request cost
# of the pages"): the portal's requests are CPU-bound Python, so threads beyond a few
# only queue behind the interpreter lock.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("PORTAL_WEB_THREADS", "4"))

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


def post_worker_init(worker):
    """Everything the worker imported to serve requests (the URLconf and the views it
    names) moves out of the garbage collector's sight: a full collection no longer walks
    those objects (about 190,000) every few requests, which cost some 20 % of a page's
    CPU time in the benchmark."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every view module now
    gc.collect()
    gc.freeze()
