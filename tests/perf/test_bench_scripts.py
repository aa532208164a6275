"""The benchmark scripts work, in a tiny configuration: the load benchmark drives its
mixed traffic (pages, API list, create, approve) and /healthz against a live server
without errors, and the page benchmark measures every page it names."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from django.core.management import call_command

from approvals.models import Approval, ChangeRequest
from bench import load_bench, page_bench
from bench.audit_bench import generate_deployments, generate_open_changes
from tests.conftest import PASSWORD


def test_load_benchmark_runs_mixed_traffic_without_errors(transactional_db, live_server,
                                                          monkeypatch):
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    generate_deployments(30)
    generate_open_changes(6)
    monkeypatch.setattr(load_bench, "PASSWORD", PASSWORD)
    monkeypatch.setattr(load_bench, "WEIGHTS", {**load_bench.WEIGHTS, "api create": 30,
                                                "api approve": 30})
    changes_before = ChangeRequest.objects.count()

    # Its own thread, so its own event loop (the browser tests' Playwright keeps one
    # running in this thread).
    with ThreadPoolExecutor(1) as pool:
        results = pool.submit(asyncio.run,
                              load_bench.run(live_server.url, users=2, seconds=2)).result()

    (mixed, mixed_rows, mixed_errors, _), (health, health_rows, health_errors, _) = results
    assert (mixed, health) == ("mixed", "healthz")
    assert not any(mixed_errors.values()) and not any(health_errors.values())
    served = {row[0]: row[1] for row in mixed_rows}
    assert served["all"] > 0 and served["api create"] > 0
    assert dict((row[0], row[1]) for row in health_rows)["healthz"] > 0
    # The writes happened: changes requested through the API, and approved.
    assert ChangeRequest.objects.count() == changes_before + served["api create"]
    assert Approval.objects.filter(approver__username="techlead").count() == served.get(
        "api approve", 0)


def test_page_benchmark_measures_every_page_it_names(demo):
    generate_deployments(30)
    rows = page_bench.measure(1)
    assert [url for _, url, *_ in rows] == [url for _, url in page_bench.pages()]
    assert all(queries > 0 for _, url, _, queries, *_ in rows if url != "/healthz")
