"""Fault bench: SIGKILL each process of `make run` while deployments run, many rounds.

    .venv/bin/python bench/fault_bench.py --rounds 5 [--kinds worker,beat,redis,postgres]

Starts its own `manage.py run` (own ports, var dir under var/bench-faults, durable
PostgreSQL), then for each round and kind: starts a deployment whose steps take
--step-delay seconds, kills the process after the first finished step, and measures
the time until /readyz answers 200 again (ready) and until the deployment finished
(finished). Every round also checks that no committed step, log line or audit event
was lost and that no step's effect was applied twice. Prints one JSON line per round,
then median and max per kind; exits 1 if any round had a problem.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.faults import KINDS, Portal, drill  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--step-delay", type=float, default=0.8)
    parser.add_argument("--first-delay", type=float, default=1.0,
                        help="the supervisor's first restart delay (make run's default: 1)")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    root = Path(__file__).resolve().parents[1] / "var" / "bench-faults"
    shutil.rmtree(root, ignore_errors=True)
    portal = Portal(root, step_delay=args.step_delay, first_delay=args.first_delay)
    portal.start()
    results: dict[str, list] = {k: [] for k in kinds}
    failed = 0
    try:
        for n in range(1, args.rounds + 1):
            for kind in kinds:
                result = drill(portal, kind, f"{kind}-{n}")
                results[kind].append(result)
                failed += bool(result.problems)
                print(json.dumps(result.__dict__), flush=True)
    finally:
        portal.stop()
    print("\nkind      rounds  ready median/max (s)  finished median/max (s)  problems")
    for kind, rounds in results.items():
        if not rounds:
            continue
        ready = [r.ready_after for r in rounds]
        done = [r.finished_after for r in rounds]
        print(f"{kind:<9} {len(rounds):>6}  {statistics.median(ready):>8.1f} / {max(ready):<8.1f}"
              f"    {statistics.median(done):>8.1f} / {max(done):<8.1f}"
              f"     {sum(bool(r.problems) for r in rounds)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
