"""DORA figures at scale: the exact computation over every deployment of the range
next to the same figures read from the daily roll-ups, in the same run, for ranges of
3 to 24 months (median time, Python CPU, SQL queries), and whether they agree. Then the
metrics page, the DORA API and the deployment list through Django's test client, each
the old way (every deployment read; DeploymentSerializer) and the new way, in turn,
next to /healthz: median time, Python CPU, queries, and the ratio to /healthz.

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
    user = get_user_model().objects.get(username="auditor")  # sees every environment
    names = dict(Application.objects.values_list("pk", "slug"))
    production = Environment.objects.get(slug="production").pk
    print(f"{Deployment.objects.count():,} deployments, {DeploymentDay.objects.count():,} "
          f"daily roll-ups; median of {args.repeat}")
    print("| environment | months | exact (ms) | exact CPU (ms) | roll-ups (ms) | "
          "roll-ups CPU (ms) | queries | deployments counted | same figures |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    visible = visible_environment_ids(user)  # None: every environment
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
    pages(args.repeat)


PAGES = [("cab", "/healthz"), ("cab", "/metrics/"),
         ("cab", "/metrics/?environment=all&months=24"),
         ("auditor-api", "/api/v1/metrics/dora/"),
         ("auditor-api", "/api/v1/metrics/dora/?environment=all&period=week"),
         ("auditor-api", "/api/v1/deployments/"),
         ("auditor-api", "/api/v1/deployments/?environment=production&status=succeeded")]


def old_way(enabled: bool):
    """The computation before the roll-ups and the rows from values(): every deployment
    of the range read; the list through DeploymentSerializer."""
    import contextlib

    from rest_framework import generics

    from deployments import api as deployments_api
    from reporting import metrics

    @contextlib.contextmanager
    def patched():
        if not enabled:
            yield
            return
        dora, listing = metrics.dora, deployments_api.DeploymentList.list

        def exact(*args, rolled=None, **kwargs):
            return dora(*args, **kwargs)

        metrics.dora = exact
        deployments_api.DeploymentList.list = generics.ListAPIView.list
        try:
            yield
        finally:
            metrics.dora, deployments_api.DeploymentList.list = dora, listing

    return patched()


def pages(repeat: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench.audit_bench import api_client

    User = get_user_model()
    clients = {"cab": Client()}
    clients["cab"].force_login(User.objects.get(username="cab"))
    clients["auditor-api"] = api_client(User.objects.get(username="auditor"))
    ways = ("before", "after")
    samples = {(way, url): [] for way in ways for _, url in PAGES}
    cpu = {(way, url): [] for way in ways for _, url in PAGES}
    queries = {}
    for way in ways:  # warm-up
        with old_way(way == "before"):
            for who, url in PAGES:
                clients[who].get(url)
    for _ in range(repeat):  # round-robin, both ways in each round
        for way in ways:
            with old_way(way == "before"):
                for who, url in PAGES:
                    with CaptureQueriesContext(connection) as ctx:
                        c0, t0 = time.process_time(), time.perf_counter()
                        response = clients[who].get(url)
                        samples[(way, url)].append(time.perf_counter() - t0)
                        cpu[(way, url)].append(time.process_time() - c0)
                    if response.status_code != 200:
                        raise SystemExit(f"{url} answered {response.status_code}")
                    queries[(way, url)] = len(ctx)
    health = statistics.median(samples[("after", "/healthz")] + samples[("before", "/healthz")])
    health_cpu = statistics.median(cpu[("after", "/healthz")] + cpu[("before", "/healthz")])
    print(f"\n/healthz: {health * 1000:.1f} ms, Python CPU {health_cpu * 1000:.1f} ms; "
          f"median of {repeat} views each way")
    print("| page | before (ms) | x /healthz | before CPU (ms) | queries | after (ms) | "
          "x /healthz | after CPU (ms) | queries |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for _, url in PAGES[1:]:
        cells = []
        for way in ways:
            wall = statistics.median(samples[(way, url)])
            cells += [f"{wall * 1000:.1f}", f"{wall / health:.1f}",
                      f"{statistics.median(cpu[(way, url)]) * 1000:.1f}", str(queries[(way, url)])]
        print(f"| `{url}` | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
