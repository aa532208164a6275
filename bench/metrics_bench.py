"""DORA figures at scale: the exact computation over every deployment of the range
next to the same figures read from the daily roll-ups, in the same run, for ranges of
3 to 24 months (median time, Python CPU, SQL queries), and whether they agree.

    PORTAL_VAR_DIR=var/perf PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/metrics_bench.py --database portal

Run it on the data set ``bench/audit_bench.py --generate-only`` builds. ``--rebuild``
first times ``manage.py rebuild_deployment_rollups`` over the whole history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")


def timed(call, repeat: int) -> tuple[float, float, int, object]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            w0, c0 = time.perf_counter(), time.process_time()
            result = call()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), len(ctx), result


def main() -> None:
    from bench.audit_bench import setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="portal_bench")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    setup(args.database, fresh=False)
    from django.contrib.auth import get_user_model

    from catalog.models import Application, Environment
    from catalog.selectors import visible_environment_ids
    from deployments import selectors
    from deployments.models import Deployment
    from reporting import metrics, rollups
    from reporting.models import DeploymentDay

    if args.rebuild:
        t0 = time.perf_counter()
        rows = rollups.rebuild()
        print(f"rebuild: {rows:,} daily roll-ups from {Deployment.objects.count():,} "
              f"deployments in {time.perf_counter() - t0:.1f} s")
    user = get_user_model().objects.get(username="cab")
    names = dict(Application.objects.values_list("pk", "slug"))
    production = Environment.objects.get(slug="production").pk
    print(f"{Deployment.objects.count():,} deployments, {DeploymentDay.objects.count():,} "
          f"daily roll-ups; median of {args.repeat}")
    print("| environment | months | exact (ms) | exact CPU (ms) | roll-ups (ms) | "
          "roll-ups CPU (ms) | queries | deployments counted | same figures |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    visible = visible_environment_ids(user)  # what the figures of "all" cover for cab
    for environment, env_ids in (("production", [production]), ("all", visible)):
        for months in (3, 6, 12, 24):
            since, until = metrics.default_range(months=months)
            qs = selectors.deployments_visible_to(user)
            if environment != "all":
                qs = qs.filter(environment__slug=environment)

            def exact(qs=qs, since=since, until=until):
                return metrics.dora(qs, since=since, until=until, applications=names)

            def rolled(qs=qs, since=since, until=until, env_ids=env_ids):
                return metrics.dora(qs, since=since, until=until, applications=names,
                                    rolled={"environment_ids": env_ids,
                                            "application_id": None})

            e_wall, e_cpu, _, e_body = timed(exact, args.repeat)
            r_wall, r_cpu, queries, r_body = timed(rolled, args.repeat)
            print(f"| {environment} | {months} | {e_wall * 1000:.1f} | {e_cpu * 1000:.1f} | "
                  f"{r_wall * 1000:.1f} | {r_cpu * 1000:.1f} | {queries} | "
                  f"{r_body['totals']['deployments']:,} | "
                  f"{'yes' if e_body == r_body else 'NO'} |")


if __name__ == "__main__":
    main()
