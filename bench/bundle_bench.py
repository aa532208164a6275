"""Evidence bundle benchmark: build time and peak memory of a bundle of N events, and
the offline verifier's speed on it.

    PORTAL_VAR_DIR=var/bench PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/bundle_bench.py --sizes 10000 100000

It uses the benchmark database of bench/audit_bench.py (``portal_bench``), adds events
until the largest size is reached, signs a checkpoint with a throwaway key, and bundles
the newest N events (the audit trail filtered by time, so every event of the range is in
scope). Build time is measured on its own; peak memory in a second build under
tracemalloc (Python allocations) and as the growth of the process's maximum resident
set. The verifier (tools/verify_bundle.py) runs in this process on the written file.
Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")


def _verifier():
    spec = importlib.util.spec_from_file_location("verify_bundle",
                                                  ROOT / "tools" / "verify_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(size: int, path: Path, *, trace: bool = False) -> tuple[float, float, int]:
    """Write a bundle of the newest ``size`` events to ``path``: (seconds, CPU seconds of
    this process, peak bytes)."""
    from audit.models import AuditEvent, SignedCheckpoint
    from reporting import bundles

    head = SignedCheckpoint.objects.order_by("-event_id").values_list("event_id", flat=True)[0]
    first = (AuditEvent.objects.filter(id__lte=head).order_by("-id")
             .values_list("id", flat=True)[size - 1])
    scope = bundles.trail_scope(AuditEvent.objects.filter(id__gte=first),
                                {"since_event": first})
    if trace:
        tracemalloc.start()
    started, cpu = time.perf_counter(), time.process_time()
    plan = bundles.plan_bundle(scope)
    with path.open("wb") as out:
        for piece in bundles.bundle_stream(plan, generated_by="bench"):
            out.write(piece)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, cpu, peak


def measure(sizes: list[int], workdir: Path) -> list[tuple]:
    from audit.checkpoints import checkpoint_sign

    checkpoint_sign(reason="benchmark")
    verifier = _verifier()
    rows = []
    for size in sizes:
        path = workdir / f"bundle-{size}.zip"
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds, cpu, _ = build(size, path)
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        _, _, peak = build(size, path, trace=True)
        started, verify_cpu = time.perf_counter(), time.process_time()
        outcome = verifier.verify(str(path), [])
        verify_seconds = time.perf_counter() - started
        verify_cpu = time.process_time() - verify_cpu
        if not outcome.startswith("OK"):
            raise SystemExit(f"the bundle did not verify: {outcome}")
        rows.append((size, seconds, cpu, peak, rss_growth, path.stat().st_size,
                     verify_seconds, verify_cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--database", default="portal_bench")
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    os.environ["PORTAL_AUDIT_SIGNING_KEY_FILE"] = str(keys / "signing-key")
    os.environ["PORTAL_AUDIT_PUBLIC_KEYS_FILE"] = str(keys / "public-keys.jsonl")
    os.environ["PORTAL_AUDIT_WITNESS_FILES"] = str(keys / "checkpoints.jsonl")
    from bench.audit_bench import generate, setup

    setup(args.database, False)
    from audit.models import AuditEvent

    have = AuditEvent.objects.count()
    if have < max(args.sizes) + 1:
        generate(max(args.sizes) + 1 - have)
    print("| events | build (s) | build CPU (s) | peak Python memory (MiB) | max RSS growth "
          "(MiB) | zip (MiB) | verify (s) | verify CPU (s) | verify events/s (CPU) |",
          flush=True)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for size, seconds, cpu, peak, rss, zipped, verify, verify_cpu in measure(args.sizes, keys):
        print(f"| {size} | {seconds:.2f} | {cpu:.2f} | {peak / 2**20:.1f} | "
              f"{rss / 1024:.1f} | {zipped / 2**20:.1f} | {verify:.2f} | {verify_cpu:.2f} | "
              f"{size / verify_cpu:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
