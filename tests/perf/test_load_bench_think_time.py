"""The load benchmark's think-time mode in a tiny configuration: people wait between
requests, N grows by steps until the p95 reaches the limit, and /healthz runs in the
same run for the ratio."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from django.core.management import call_command

from bench import load_bench
from bench.audit_bench import generate_deployments, generate_open_changes
from tests.conftest import PASSWORD


def _run(url: str, **kwargs):
    with ThreadPoolExecutor(1) as pool:  # its own event loop
        return pool.submit(asyncio.run, load_bench.run_think_time(url, **kwargs)).result()


def test_think_time_steps_people_until_the_p95_limit(transactional_db, live_server,
                                                     monkeypatch, capsys):
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    generate_deployments(20)
    generate_open_changes(4)
    monkeypatch.setattr(load_bench, "PASSWORD", PASSWORD)

    # A limit nobody misses: every step runs, up to the last N.
    steps, health = _run(live_server.url, people=(1, 2, 3), seconds=1.5, think=(0.05, 0.2),
                         seed=1, limit=60.0, health_users=1)
    assert [row[0] for row in steps] == [1, 3]
    assert all(row[1] > 0 and row[5] == 0 for row in steps)  # requests, no errors
    assert health[1] > 0
    assert load_bench.think_time_report(steps, health, limit=60.0, think=(0.05, 0.2),
                                        seconds=1.5) == 0
    printed = capsys.readouterr().out
    assert "largest N with p95 < 60000 ms: 3 people" in printed
    assert "x /healthz" in printed

    # A limit every request misses: the first step is the last, and none passes.
    steps, health = _run(live_server.url, people=(1, 2, 5), seconds=1, think=(0.05, 0.2),
                         seed=1, limit=1e-9, health_users=1)
    assert [row[0] for row in steps] == [1]
    load_bench.think_time_report(steps, health, limit=1e-9, think=(0.05, 0.2), seconds=1)
    assert "no step kept p95 under" in capsys.readouterr().out
