"""Dispatch bench: from a deployment's commit to its first step running, against a bare
Celery task doing the same row claim on the same PostgreSQL, Redis and worker.

    PORTAL_VAR_DIR=... PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/dispatch_bench.py --runs 50

Uses its own database (portal_dispatch_bench) on the embedded servers and starts its
own worker (one prefork process, as the test suite's). Dispatches one at a time,
alternating deployments and bare tasks; prints the medians, p90s and the ratio, one
JSON line at the end; exits 1 when the median ratio is above --max-ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import engine  # noqa: E402


def _first_step_started(deployment_id: int, timeout: float = 30.0):
    from deployments.models import DeploymentStep

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = (DeploymentStep.objects.filter(deployment_id=deployment_id, position=1)
                   .values_list("started_at", flat=True).first())
        if started is not None:
            return started.timestamp()
        time.sleep(0.001)
    raise RuntimeError(f"deployment {deployment_id}: first step did not start")


def _wait_final(deployment_id: int, timeout: float = 60.0) -> str:
    from deployments.models import Deployment

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Deployment.objects.values_list("status", flat=True).get(pk=deployment_id)
        if status in Deployment.FINAL:
            return status
        time.sleep(0.005)
    raise RuntimeError(f"deployment {deployment_id} did not end")


def dispatch_once(user, env, app, version: str) -> float:
    from django.db import transaction

    from catalog.models import Release
    from deployments import services

    release = Release.objects.create(application=app, version=version, created_by=user)
    committed = {}
    with transaction.atomic():
        # Registered first, so it runs right after COMMIT, before the deployment's send.
        transaction.on_commit(lambda: committed.setdefault("at", time.time()))
        deployment = services.deployment_create(actor=user, release=release, environment=env)
    started = _first_step_started(deployment.pk)
    status = _wait_final(deployment.pk)
    if status != "succeeded":
        raise RuntimeError(f"deployment {deployment.pk} {status}")
    return (started - committed["at"]) * 1000


def floor_once(user, env, app, version: str) -> float:
    from django.db import transaction

    from bench.dispatch_floor import floor_claim
    from catalog.models import Release
    from deployments.models import Deployment, DeploymentStep
    from deployments.services import deploy_queue

    release = Release.objects.create(application=app, version=version, created_by=user)
    committed = {}
    with transaction.atomic():
        # A row the engine never runs (waiting, never promoted): only the floor task claims it.
        row = Deployment.objects.create(application=app, environment=env, release=release,
                                        holds_target=False)
        DeploymentStep.objects.create(deployment=row, position=1, name="deploy",
                                      title="Deploy new version")
        transaction.on_commit(lambda: committed.setdefault("at", time.time()))
        transaction.on_commit(lambda: floor_claim.apply_async(
            args=[row.pk], queue=deploy_queue(env.slug)))
    started = _first_step_started(row.pk)
    Deployment.objects.filter(pk=row.pk).update(status="cancelled")
    return (started - committed["at"]) * 1000


def run(runs: int, warmup: int = 3) -> dict:
    engine.setup("portal_dispatch_bench")
    user, env, apps = engine.make_applications(2, commands={}, prefix="dispatch")
    worker = engine.start_worker(concurrency=1, name="dispatch-bench",
                                 include="bench.dispatch_floor")
    deployments, floor = [], []
    try:
        for i in range(warmup + runs):
            d = dispatch_once(user, env, apps[0], f"1.{i}.0")
            f = floor_once(user, env, apps[1], f"1.{i}.0")
            if i >= warmup:
                deployments.append(d)
                floor.append(f)
    finally:
        engine.stop_worker(worker)

    def p90(values):
        return sorted(values)[max(0, int(len(values) * 0.9) - 1)]

    result = {
        "runs": runs,
        "deployment_median_ms": round(statistics.median(deployments), 2),
        "deployment_p90_ms": round(p90(deployments), 2),
        "floor_median_ms": round(statistics.median(floor), 2),
        "floor_p90_ms": round(p90(floor), 2),
    }
    result["ratio"] = round(result["deployment_median_ms"] / result["floor_median_ms"], 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--max-ratio", type=float, default=4.0)
    args = parser.parse_args()
    result = run(args.runs)
    print(f"dispatch, commit to first step running, {result['runs']} runs:")
    print(f"  deployment   median {result['deployment_median_ms']:7.2f} ms   "
          f"p90 {result['deployment_p90_ms']:7.2f} ms")
    print(f"  bare task    median {result['floor_median_ms']:7.2f} ms   "
          f"p90 {result['floor_p90_ms']:7.2f} ms")
    print(f"  ratio (median) {result['ratio']:.2f} (at most {args.max_ratio})")
    print(json.dumps(result))
    return 0 if result["ratio"] <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
