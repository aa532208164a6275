"""Policy backtest benchmark: how long `POST /api/v1/policies/backtest` takes to replay a
proposed document over six months of changes (docs/benchmarks.md, "Policy backtest").

    PORTAL_VAR_DIR=var/bench PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/policy_backtest_bench.py --changes 20000
    ... bench/policy_backtest_bench.py --database portal_demo_history --demo-history

Its own database on the embedded PostgreSQL (or the server DATABASE_URL points at):
``--changes`` deployed changes over the last ``--months`` months made as
`bench/audit_bench.py` makes its deployments (each with its change, a submission risk
score added here), after `seed_demo`; ``--demo-history`` instead makes the demo's six
months through the services (`seed_demo --history`). The proposed document is the
active one with the three worked examples of docs/policies.md added. Prints a Markdown
table: seconds per run (each run parses, reads and replays from scratch), the changes
replayed, those that differ, the distinct evaluations and the SQL queries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import audit_bench  # noqa: E402

WORKED_EXAMPLES = {
    "rules": [
        {"name": "payments-security",
         # The demo's payments-api; one of the generated services stands in for it.
         "when": 'change.applications.exists(a, a.startsWith("payments") '
                 '|| a == "service-03")',
         "gates": {"security": 1}, "reason": "payments handle card data"},
        {"name": "two-cab-above-70",
         "when": 'change.environment == "production" && change.risk_score > 70',
         "gates": {"cab": 2}},
    ],
    "start_restrictions": [
        {"name": "no-friday-afternoon-production",
         "when": 'change.environment == "production" && local.weekday == "friday" '
                 "&& local.hour >= 12",
         "reason": "nobody is around to watch it over the weekend"},
    ],
}


def scores_for_changes() -> None:
    """A submission risk score for each change that has none (0 to 99, by id)."""
    from approvals.models import ChangeRequest, RiskAssessment

    have = set(RiskAssessment.objects.values_list("change_id", flat=True).distinct())
    rows = [RiskAssessment(change_id=pk, score=(pk * 37) % 100, trigger="submitted",
                           created_at=at)
            for pk, at in ChangeRequest.objects.exclude(submitted_at=None)
            .values_list("id", "submitted_at") if pk not in have]
    RiskAssessment.objects.bulk_create(rows, batch_size=5000)


def proposed_text() -> str:
    import yaml

    from approvals import services

    data = yaml.safe_load(services.active_version().document)
    data.pop("examples", None)
    for key, items in WORKED_EXAMPLES.items():
        data[key] = [*(data.get(key) or []), *items]
    return yaml.safe_dump(data, sort_keys=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="portal_backtest_bench")
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--demo-history", action="store_true",
                        help="the demo's six months of history instead of generated changes")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the database")
    args = parser.parse_args()
    audit_bench.setup(args.database, args.fresh)
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals.models import ChangeRequest
    from approvals.policy_backtest import backtest

    t0 = time.perf_counter()
    if args.demo_history:
        call_command("seed_demo", history=True, verbosity=0)
    else:
        call_command("seed_demo", verbosity=0)
        have = ChangeRequest.objects.filter(status="deployed").count()
        if have < args.changes:
            audit_bench.generate_deployments(args.changes - have, years=args.months / 12)
        scores_for_changes()
    print(f"data ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    text = proposed_text()
    times, report, queries = [], None, 0
    for _ in range(args.repeat):
        with CaptureQueriesContext(connection) as ctx:
            start = time.perf_counter()
            report = backtest(text, months=args.months)
            times.append(time.perf_counter() - start)
        queries = len(ctx.captured_queries)
    counts = report["counts"]
    print("| data | changes replayed | differ | distinct evaluations | queries | "
          "first run (s) | median (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    label = "demo history" if args.demo_history else f"{args.changes} generated changes"
    print(f"| {label} | {counts['changes']} | {counts['differing']} | "
          f"{report['evaluations']} | {queries} | {times[0]:.2f} | "
          f"{statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
