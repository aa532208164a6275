"""Page timings at scale: the median time and the number of SQL queries of each page's
first view and of the API lists, through Django's test client (the whole request:
session, permissions, queries, template), next to /healthz in the same run. The pages
are viewed in turn, one round after another, and each row also gives the Python CPU
time of a view (this process: the portal's code and Django's, not PostgreSQL's), which
a busy neighbour on a shared machine disturbs less than the wall clock.

    PORTAL_VAR_DIR=var/run PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/page_bench.py --database portal

Run it on the data set ``bench/audit_bench.py --generate-only`` builds (the same
``--database``). The signed-in people are the demo's: ``cab`` for the workflow pages,
``auditor`` for the auditor's pages and the API lists.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")


def pages() -> list[tuple[str, str]]:
    """(who, url) of every page measured; the change and deployment are the newest
    production ones of a generated application (the longest rollback history)."""
    from approvals.models import ChangeRequest
    from deployments.models import Deployment

    deployment = (Deployment.objects.filter(environment__slug="production",
                                            application__slug="service-01")
                  .order_by("-id").first())
    change = ChangeRequest.objects.get(pk=deployment.change_id)
    return [
        ("cab", "/healthz"),
        ("cab", "/approvals/"),
        ("cab", "/approvals/?page=2"),
        ("cab", "/changes/"),
        ("cab", f"/changes/{change.pk}/"),
        ("cab", "/deployments/"),
        ("cab", f"/deployments/{deployment.pk}/"),
        ("cab", "/dashboard/"),
        ("cab", "/dashboard/live"),
        ("cab", "/metrics/"),
        ("cab", "/metrics/?environment=all&months=24"),
        ("cab", "/calendar/"),
        ("auditor", "/audit/"),
        ("auditor", "/auditor/deployments/"),
        ("auditor", f"/auditor/deployments/{deployment.pk}/"),
        ("auditor", "/auditor/access/"),
        ("auditor-api", "/api/v1/changes/"),
        ("auditor-api", "/api/v1/deployments/"),
        ("auditor-api", "/api/v1/audit-events/"),
    ]


def measure(repeat: int, only: list[str] | None = None
            ) -> list[tuple[str, str, float, int, int, float, float]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench.audit_bench import api_client

    User = get_user_model()
    clients = {}
    for who in ("cab", "auditor"):
        clients[who] = Client()
        clients[who].force_login(User.objects.get(username=who))
    clients["auditor-api"] = api_client(User.objects.get(username="auditor"))
    measured = [(who, url) for who, url in pages()
                if not only or url == "/healthz" or url.startswith(tuple(only))]
    for who, url in measured:  # warm-up: per-process caches
        clients[who].get(url)
    if not os.environ.get("PAGE_BENCH_NO_FREEZE"):
        # As each gunicorn worker does once started (gunicorn.conf.py): what start-up
        # and the warm-up loaded stays out of the garbage collector's full collections.
        gc.collect()
        gc.freeze()
    # Round-robin: every page is viewed once per round, so a slow moment of a shared
    # machine falls on all of them alike rather than on one page's samples.
    samples: dict[str, list[float]] = {url: [] for _, url in measured}
    cpu: dict[str, list[float]] = {url: [] for _, url in measured}
    last: dict[str, tuple] = {}
    for _ in range(repeat):
        for who, url in measured:
            with CaptureQueriesContext(connection) as ctx:
                c0, t0 = time.process_time(), time.perf_counter()
                response = clients[who].get(url)
                samples[url].append(time.perf_counter() - t0)
                cpu[url].append(time.process_time() - c0)
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}")
            last[url] = (ctx.captured_queries, len(response.content))
    rows = []
    for who, url in measured:
        queries, size = last[url]
        sql = sum(float(q["time"]) for q in queries)
        slowest = max(queries, key=lambda q: float(q["time"]), default=None)
        if os.environ.get("PAGE_BENCH_SLOWEST") and slowest:
            print(f"{url}: slowest {float(slowest['time']) * 1000:.0f} ms: "
                  f"{slowest['sql'][:600]}", file=sys.stderr)
        rows.append((who.split("-")[0], url, statistics.median(samples[url]),
                     len(queries), size, sql, statistics.median(cpu[url])))
    return rows


def middleware_costs(repeat: int) -> None:
    """What each middleware costs a request on its own (its CPU time less that of the
    layers inside it), per page: Django wraps every middleware, and the view, in
    ``convert_exception_to_response`` as it builds the handler, so timing that wrapper
    gives each layer's inclusive time. ``view`` is URL resolution, the view middleware
    hooks (CSRF's ``process_view``), the view and its template."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.handlers import base
    from django.test import Client

    from bench.audit_bench import api_client

    current = {"url": ""}
    inclusive: dict[str, dict[str, list[float]]] = {}
    original = base.convert_exception_to_response
    # The handler wraps the view first, then each middleware from the last to the first.
    names = ["view", *reversed(settings.MIDDLEWARE)]
    built = [0]

    def timed(get_response):
        inner = original(get_response)
        name = names[built[0] % len(names)]
        built[0] += 1

        def call(request):
            c0 = time.process_time()
            try:
                return inner(request)
            finally:
                inclusive.setdefault(current["url"], {}).setdefault(name, []).append(
                    time.process_time() - c0)
        return call

    base.convert_exception_to_response = timed
    try:
        User = get_user_model()
        clients = {"cab": Client(), "auditor-api": api_client(
            User.objects.get(username="auditor"))}
        clients["cab"].force_login(User.objects.get(username="cab"))
        measured = [(who, url) for who, url in pages() if url in (
            "/healthz", "/approvals/", "/changes/", "/dashboard/", "/api/v1/changes/")
            or url.startswith("/changes/1")]
        for who, url in measured:
            current["url"] = ""
            clients[who].get(url)
        inclusive.clear()
        for _ in range(repeat):
            for who, url in measured:
                current["url"] = url
                clients[who].get(url)
    finally:
        base.convert_exception_to_response = original
    # Outermost first, as settings.MIDDLEWARE lists them; each name's own cost is its
    # median inclusive time less the next layer's.
    names = [*settings.MIDDLEWARE, "view"]
    urls = [url for _, url in measured]
    print("| middleware (outermost first) | " + " | ".join(f"`{u}`" for u in urls) + " |")
    print("| --- |" + " ---: |" * len(urls))
    totals = dict.fromkeys(urls, 0.0)
    for i, name in enumerate(names):
        cells = []
        for url in urls:
            mine = statistics.median(inclusive[url].get(name, [0.0]))
            inner = (statistics.median(inclusive[url].get(names[i + 1], [0.0]))
                     if i + 1 < len(names) else 0.0)
            own = max(mine - inner, 0.0)
            if name != "view":
                totals[url] += own
            cells.append(f"{own * 1000:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| all middleware (CPU ms) | " + " | ".join(
        f"{totals[u] * 1000:.2f}" for u in urls) + " |")


def main() -> None:
    from bench.audit_bench import setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="portal_bench")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--pages", nargs="*", metavar="PREFIX",
                        help="only the pages whose URL starts with one of these")
    parser.add_argument("--middleware", action="store_true",
                        help="what each middleware costs a request, per page (CPU ms)")
    args = parser.parse_args()
    setup(args.database, fresh=False)
    from approvals.models import ChangeRequest
    from audit.models import AuditEvent
    from deployments.models import Deployment, DeploymentStep

    print(f"{ChangeRequest.objects.count():,} changes, {Deployment.objects.count():,} "
          f"deployments, {DeploymentStep.objects.count():,} steps, "
          f"{AuditEvent.objects.count():,} audit events; median of {args.repeat} views")
    if args.middleware:
        middleware_costs(args.repeat)
        return
    rows = measure(args.repeat, args.pages)
    health = next(r[2] for r in rows if r[1] == "/healthz")
    print("| as | page | median (ms) | x /healthz | Python CPU (ms) | queries | SQL (ms) | kB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for who, url, median, queries, size, sql, cpu in rows:
        print(f"| {who} | `{url}` | {median * 1000:.1f} | {median / health:.1f} | "
              f"{cpu * 1000:.1f} | {queries} | {sql * 1000:.1f} | {size / 1024:.0f} |")


if __name__ == "__main__":
    main()
