"""Throughput bench: many deployments over many applications on a few worker processes.

    PORTAL_VAR_DIR=... PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/throughput_bench.py --deployments 200 --applications 20 \\
        --workers 4 --step-seconds 0.25

Uses its own database (portal_throughput_bench) on the embedded servers and one worker
with --workers pool processes. Each application gets deployments/applications
deployments, requested all at once (they queue behind each other per application);
each of a deployment's eight steps sleeps --step-seconds (the `command` executor, one
target). Reports the makespan (first request to last end) against the
ideal (sum of every step's measured duration / workers), and checks that every
deployment succeeded, each step ran once, each application's deployments ran one at a
time in the order requested, and each log says its version was deployed once. Exits 1
on a problem or when the ratio is above --max-ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import engine  # noqa: E402

# The steps of an all-at-once deployment to one target (deployments.strategies).
STEPS = ("pre_health_check", "backup", "migrate", "stop", "deploy", "start", "health_check",
         "finalize")


def check(deployments) -> list[str]:
    """Problems found in the database: lost, failed, run twice, overlapping, out of order."""
    from deployments.models import DeploymentLogLine, DeploymentStep

    problems = []
    by_app: dict[int, list] = {}
    for d in deployments:
        if d.status != "succeeded":
            problems.append(f"deployment {d.pk} {d.status}: {d.failure_reason}")
        if d.attempts != 1:
            problems.append(f"deployment {d.pk} started {d.attempts} times")
        by_app.setdefault(d.application_id, []).append(d)
    twice = DeploymentStep.objects.filter(deployment__in=deployments, attempts__gt=1).count()
    if twice:
        problems.append(f"{twice} steps claimed more than once")
    not_done = DeploymentStep.objects.filter(deployment__in=deployments).exclude(
        status="succeeded").count()
    if not_done:
        problems.append(f"{not_done} steps not succeeded")
    deployed_lines = {}
    for dep_id in (DeploymentLogLine.objects.filter(
            deployment__in=deployments, message__regex=r"^Deploy new version to .*: ")
            .values_list("deployment_id", flat=True)):
        deployed_lines[dep_id] = deployed_lines.get(dep_id, 0) + 1
    for d in deployments:
        if deployed_lines.get(d.pk) != 1:
            problems.append(f"deployment {d.pk}: {deployed_lines.get(d.pk, 0)} "
                            "'Deploy new version ...: done' log lines")
    for runs in by_app.values():
        runs.sort(key=lambda d: (d.created_at, d.pk))
        for before, after in zip(runs, runs[1:], strict=False):
            if after.started_at is None or before.finished_at is None:
                continue
            if after.started_at < before.finished_at:
                problems.append(f"deployments {before.pk} and {after.pk} of one application "
                                "overlapped")
            if after.started_at < before.started_at:
                problems.append(f"deployment {after.pk} started before {before.pk}")
    return problems


def run(*, deployments: int, applications: int, workers: int, step_seconds: float,
        database: str = "portal_throughput_bench", timeout: float = 600) -> dict:
    engine.setup(database)
    from django.db.models import F, Sum

    from deployments.models import Deployment, DeploymentStep

    user, env, apps = engine.make_applications(
        applications, commands={name: f"sleep {step_seconds}" for name in STEPS}, prefix="tp")
    worker = engine.start_worker(concurrency=workers, name="throughput-bench")
    try:
        began = time.time()
        made = []
        per_app = deployments // applications
        for n in range(per_app):
            for app in apps:
                made.append(engine.deploy(user, env, app, f"1.{n}.0").pk)
        deadline = time.monotonic() + timeout
        while Deployment.objects.filter(pk__in=made).exclude(
                status__in=Deployment.FINAL).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("deployments did not all end in time")
            time.sleep(0.05)
    finally:
        engine.stop_worker(worker)
    rows = list(Deployment.objects.filter(pk__in=made))
    ended = max(d.finished_at for d in rows if d.finished_at).timestamp()
    busy = DeploymentStep.objects.filter(deployment__in=rows).aggregate(
        s=Sum(F("finished_at") - F("started_at")))["s"].total_seconds()
    makespan = ended - began
    ideal = busy / workers
    return {"deployments": len(rows), "applications": applications, "workers": workers,
            "step_seconds": step_seconds, "makespan_s": round(makespan, 2),
            "step_time_s": round(busy, 2), "ideal_s": round(ideal, 2),
            "ratio": round(makespan / ideal, 3), "problems": check(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--applications", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.25)
    parser.add_argument("--max-ratio", type=float, default=1.3)
    args = parser.parse_args()
    result = run(deployments=args.deployments, applications=args.applications,
                 workers=args.workers, step_seconds=args.step_seconds)
    print(f"{result['deployments']} deployments, {result['applications']} applications, "
          f"{result['workers']} worker processes")
    print(f"  makespan {result['makespan_s']} s; steps took {result['step_time_s']} s in "
          f"all, / {result['workers']} = {result['ideal_s']} s; ratio {result['ratio']} "
          f"(at most {args.max_ratio})")
    print(f"  problems: {len(result['problems'])}")
    for problem in result["problems"][:20]:
        print(f"    {problem}")
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}
                     | {"problems": len(result["problems"])}))
    return 0 if not result["problems"] and result["ratio"] <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
