"""Audit trail benchmark: generates a hash-chained trail and measures the portal's paths
against the bare stack (the same rows read with a plain SELECT).

    PORTAL_VAR_DIR=var/bench PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/audit_bench.py --rows 1000000

It uses its own database (``portal_bench``) on the embedded PostgreSQL, or the
server DATABASE_URL points at. ``--rows`` is the size to reach (rows are added
only when fewer exist); results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

ACTIONS = ["change.created", "change.submitted", "gate.approved", "gate.rejected",
           "deployment.queued", "deployment.started", "deployment.succeeded",
           "deployment.failed", "release.registered", "checklist.ticked", "auth.login",
           "auth.login_failed", "token.issued", "environment.locked", "change.closed"]
ENVIRONMENTS = ["development", "staging", "production"]
USERS = [f"user{i:03d}" for i in range(200)]


def setup(database: str, fresh: bool) -> None:
    from portal import embedded

    if embedded.uses_embedded_database():
        embedded.Services().start(reuse=True)
        import psycopg

        base = embedded.embedded_database_url()
        with psycopg.connect(base, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  [database]).fetchone()
            if exists and fresh:
                conn.execute(f'DROP DATABASE "{database}"')
            if fresh or not exists:
                conn.execute(f'CREATE DATABASE "{database}"')
        os.environ["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + database
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def generate(rows: int) -> None:
    """Append ``rows`` events with a valid chain, spread over three years, by COPY."""
    from django.db import connection
    from psycopg.types.json import Jsonb

    from portal.audit import GENESIS_HASH, HASHED_FIELDS, compute_hash
    from portal.models import AuditEvent

    last = AuditEvent.objects.order_by("-id").values("hash", "occurred_at").first()
    prev = last["hash"] if last else GENESIS_HASH
    # Spread over the three years up to now, as a trail past one purge would be.
    now = datetime.now(UTC)
    start = last["occurred_at"] if last else now - timedelta(days=3 * 365)
    step = (now - start) / (max(rows, 1) + 1)
    rng = random.Random(42)
    columns = list(HASHED_FIELDS) + ["hash"]
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY portal_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
            for i in range(rows):
                user = rng.randrange(len(USERS))
                action = rng.choice(ACTIONS)
                row = {
                    "occurred_at": (start + step * (i + 1)).replace(microsecond=0),
                    "actor_id": user + 1_000_000, "actor_name": USERS[user],
                    "actor_kind": "user", "action": action,
                    "object_type": action.split(".")[0], "object_id": str(rng.randrange(10**6)),
                    "object_repr": f"CR-{rng.randrange(10**6)} storefront 2.{i % 97}.0",
                    "environment": rng.choice(ENVIRONMENTS),
                    "before": {"status": "pending"}, "after": {"status": "approved", "n": i},
                    "reason": "", "request_id": f"{i:032x}", "ip": "10.0.0.1",
                    "user_agent": "bench", "prev_hash": prev,
                }
                row["hash"] = prev = compute_hash(row)
                copy.write_row([Jsonb(row[c]) if c in ("before", "after") else row[c]
                                for c in columns])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE portal_auditevent")
    print(f"generated {rows} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of ``repeat`` runs after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bare(sql: str, params=()):
    from django.db import connection

    def run():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            cursor.fetchall()

    return run


def measure(rows_target: int, repeat: int) -> list[tuple[str, float, float, str]]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.test import Client

    from portal.audit import System, audit_record, verify_chain
    from portal.models import AuditEvent

    User = get_user_model()
    auditor, _ = User.objects.get_or_create(username="bench-auditor",
                                            defaults={"is_superuser": True})
    client = Client()
    client.force_login(auditor)
    total = AuditEvent.objects.count()
    low = AuditEvent.objects.order_by("id").values_list("id", flat=True).first()
    deep = low + 1000  # the last page an auditor can reach by paging back
    cols = "*"
    results = []

    def page(url):
        def run():
            response = client.get(url)
            assert response.status_code == 200, response.status_code
        return run

    cases = [
        ("audit browser, newest page", "/audit/",
         f"SELECT {cols} FROM portal_auditevent ORDER BY id DESC LIMIT 51", ()),
        ("audit browser, oldest page (keyset)", f"/audit/?before={deep}",
         f"SELECT {cols} FROM portal_auditevent WHERE id < %s ORDER BY id DESC LIMIT 51",
         (deep,)),
        ("audit browser, one actor", "/audit/?actor=user007",
         f"SELECT {cols} FROM portal_auditevent WHERE actor_name = 'user007' "
         "ORDER BY id DESC LIMIT 51", ()),
        ("audit browser, environment + action",
         "/audit/?environment=production&action=gate.approved",
         f"SELECT {cols} FROM portal_auditevent WHERE environment = 'production' "
         "AND action = 'gate.approved' ORDER BY id DESC LIMIT 51", ()),
        ("audit browser, one day a year ago",
         f"/audit/?since={(datetime.now(UTC) - timedelta(days=365)):%Y-%m-%d}"
         f"&until={(datetime.now(UTC) - timedelta(days=364)):%Y-%m-%d}",
         f"SELECT {cols} FROM portal_auditevent WHERE occurred_at >= now() - interval '365 days' "
         "AND occurred_at < now() - interval '364 days' ORDER BY id DESC LIMIT 51", ()),
    ]
    for name, url, sql, params in cases:
        results.append((name, timed(page(url), repeat), timed(bare(sql, params), repeat),
                        "one page of 50, rendered"))

    # Export: JSON Lines of one environment's events for one month.
    month_from = datetime.now(UTC) - timedelta(days=400)
    month_to = month_from + timedelta(days=30)
    export_url = (f"/audit/export.jsonl?environment=staging&since={month_from:%Y-%m-%d}"
                  f"&until={month_to:%Y-%m-%d}")
    exported = {}

    def export():
        response = client.get(export_url)
        exported["n"] = sum(chunk.count(b"\n") for chunk in response.streaming_content)

    results.append(("export JSON Lines, one environment, one month", timed(export, repeat),
                    timed(bare(f"SELECT {cols} FROM portal_auditevent WHERE environment = "
                               "'staging' AND occurred_at >= %s AND occurred_at < %s",
                               (month_from, month_to)), repeat),
                    f"{exported['n']} rows streamed"))

    # Writing: audit_record (chain lock, head lookup, SHA-256) against a bare INSERT.
    n = 500
    system = System("bench")

    def write_events():
        for _ in range(n):
            with transaction.atomic():
                audit_record(actor=system, action="bench.write", object_type="bench",
                             object_id="1", object_repr="bench")

    def bare_inserts():
        for i in range(n):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO portal_bench_insert (occurred_at, body, hash) "
                    "VALUES (now(), %s, md5(%s))", [f"row {i}", f"row {i}"])

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS portal_bench_insert "
                       "(id bigserial primary key, occurred_at timestamptz, body text, hash text)")
    results.append((f"write {n} events, one transaction each", timed(write_events, 3),
                    timed(bare_inserts, 3), "bare: INSERT into an unindexed table"))

    # Verification walks every row.
    def full_scan():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DECLARE c NO SCROLL CURSOR FOR SELECT * FROM portal_auditevent "
                           "ORDER BY id")
            while True:
                cursor.execute("FETCH 5000 FROM c")
                if not cursor.fetchall():
                    break

    t0 = time.perf_counter()
    report = verify_chain()
    verify_s = time.perf_counter() - t0
    assert report.ok, report.problem
    results.append((f"verify_audit over {report.checked} events", verify_s, timed(full_scan, 1),
                    f"{report.checked / verify_s:,.0f} events/s"))
    # Retention purge of everything older than two years (about a third of the rows),
    # against a bare DELETE of the same rows (trigger disabled, rolled back).
    from portal.audit import audit_purge_expired, retention_days

    cutoff = datetime.now(UTC) - timedelta(days=retention_days())
    expired = AuditEvent.objects.filter(occurred_at__lt=cutoff).count()

    def bare_delete():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
            cursor.execute("DELETE FROM portal_auditevent WHERE occurred_at < %s", [cutoff])
            transaction.set_rollback(True)

    bare_s = timed(bare_delete, 1)
    t0 = time.perf_counter()
    purged = audit_purge_expired()
    purge_s = time.perf_counter() - t0
    assert purged.events_removed == expired, (purged.events_removed, expired)
    t0 = time.perf_counter()
    after = verify_chain()
    assert after.ok, after.problem
    results.append((f"retention purge of {expired} events", purge_s, bare_s,
                    f"{len(purged.checkpoints)} checkpoints; verify_audit afterwards OK in "
                    f"{time.perf_counter() - t0:.1f} s"))
    print(f"measured at {total} events", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database", default="portal_bench")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the database")
    args = parser.parse_args()
    setup(args.database, args.fresh)
    from portal.models import AuditEvent

    have = AuditEvent.objects.count()
    if have < args.rows:
        generate(args.rows - have)
    print("| measurement | portal (s) | bare stack (s) | ratio | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, ours, base, note in measure(args.rows, args.repeat):
        print(f"| {name} | {ours:.4f} | {base:.4f} | {ours / base:.1f}x | {note} |")


if __name__ == "__main__":
    main()
