"""The API change list's Python CPU with the conflict rules as they were (every change of
a page compared with every open change, each overlapping window described once per
pair) and as they are (compared with those in its environment or with its on-call
engineer, each window described once per page), in turn in the same process, next to
/healthz.

    PORTAL_VAR_DIR=var/perf PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/api_list_bench.py --database portal
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")


@contextlib.contextmanager
def conflict_rules_as_before(enabled: bool):
    from approvals import conflicts

    if not enabled:
        yield
        return
    near, overlapping = conflicts.World.near, conflicts.World.overlapping
    conflicts.World.near = lambda self, change: self.changes
    conflicts.World.overlapping = (
        lambda self, other: f"in an overlapping window ({other.window.describe()})")
    try:
        yield
    finally:
        conflicts.World.near, conflicts.World.overlapping = near, overlapping


def main() -> None:
    from bench.audit_bench import setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="portal_bench")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    setup(args.database, fresh=False)
    from django.contrib.auth import get_user_model

    from bench.audit_bench import api_client
    from core import clock

    # One moment for the whole run, so both ways describe the same windows ("any time
    # until ..." names the minute) and their bodies can be compared byte for byte.
    frozen = clock.now()
    clock.now = lambda: frozen
    User = get_user_model()
    urls = ["/healthz", "/api/v1/changes/", "/api/v1/changes/?environment=production"]
    print("| as | request | before: wall (ms) | CPU (ms) | after: wall (ms) | CPU (ms) | "
          "same body |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for who in ("auditor", "engineer"):
        client = api_client(User.objects.get(username=who))
        wall, cpu, bodies = {}, {}, {}
        for way in ("before", "after"):  # warm-up
            with conflict_rules_as_before(way == "before"):
                for url in urls:
                    client.get(url)
        for _ in range(args.repeat):
            for way in ("before", "after"):
                with conflict_rules_as_before(way == "before"):
                    for url in urls:
                        c0, t0 = time.process_time(), time.perf_counter()
                        response = client.get(url)
                        wall.setdefault((way, url), []).append(time.perf_counter() - t0)
                        cpu.setdefault((way, url), []).append(time.process_time() - c0)
                        bodies[(way, url)] = response.content
        for url in urls:
            cells = []
            for way in ("before", "after"):
                cells += [f"{statistics.median(wall[(way, url)]) * 1000:.1f}",
                          f"{statistics.median(cpu[(way, url)]) * 1000:.1f}"]
            same = bodies[("before", url)] == bodies[("after", url)]
            print(f"| {who} | `{url}` | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
