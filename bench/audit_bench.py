"""Audit trail benchmark: generates two busy years of a hash-chained trail and of
deployments, and measures the portal's paths against the bare stack (the same rows
read with a plain SELECT).

    PORTAL_VAR_DIR=var/bench PORTAL_PG_PORT=... PORTAL_REDIS_PORT=... \\
        .venv/bin/python bench/audit_bench.py --rows 10000000 --deployments 200000

It uses its own database (``portal_bench``) on the embedded PostgreSQL, or the
server DATABASE_URL points at. ``--rows`` and ``--deployments`` are the sizes to
reach (rows are added only when fewer exist); results go to stdout as a Markdown
table. ``--skip-chain`` measures only the pages and exports.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import tracemalloc
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


def generate(rows: int, years: float = 2) -> None:
    """Append ``rows`` events with a valid chain, spread over ``years`` up to now, by COPY."""
    from django.db import connection
    from psycopg.types.json import Jsonb

    from audit.models import AuditEvent
    from audit.trail import GENESIS_HASH, HASHED_FIELDS, compute_hash

    last = AuditEvent.objects.order_by("-id").values("hash", "occurred_at").first()
    prev = last["hash"] if last else GENESIS_HASH
    now = datetime.now(UTC)
    start = last["occurred_at"] if last else now - timedelta(days=365 * years - 1)
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
    # COPY wrote around audit_record: recount the access review's daily sign-ins.
    from audit.trail import rebuild_sign_in_days

    rebuild_sign_in_days()
    print(f"generated {rows} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _insert_select(model, values: dict[str, str], source: str, params=()) -> int:
    """``INSERT INTO <model> (...) SELECT ... FROM <source>``: ``values`` maps columns to
    SQL expressions; every other column gets its field's default as a parameter."""
    from django.db import connection

    columns, exprs, defaults = [], [], []
    for f in model._meta.concrete_fields:
        columns.append(f'"{f.column}"')
        if f.column in values:
            exprs.append(values[f.column].replace("%", "%%"))
        else:
            exprs.append("%s")
            defaults.append(None if f.null and not f.has_default()
                            else f.get_db_prep_save(f.get_default(), connection))
    unknown = set(values) - {f.column for f in model._meta.concrete_fields}
    assert not unknown, unknown
    # Defaults first (they appear first in the SELECT list), then the source's params.
    sql = (f'INSERT INTO "{model._meta.db_table}" ({", ".join(columns)}) '
           f'SELECT {", ".join(exprs)} FROM {source}')
    with connection.cursor() as cursor:
        cursor.execute(sql, [*defaults, *params])
        count = cursor.rowcount
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{model._meta.db_table}', 'id'), "
                       f'(SELECT max(id) FROM "{model._meta.db_table}"))')
    return count


APPLICATIONS = [f"service-{i:02d}" for i in range(12)]


def generate_deployments(count: int, years: float = 2) -> None:
    """``count`` deployments over ``years`` up to now, in id and time order, each with its
    release, its change (requester, two gates, two approvals) and its backup and
    health-check steps: what the deployment history pages read."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from approvals.models import Approval, ChangeRequest, Gate
    from catalog.models import Application, Environment, Release
    from deployments.models import Deployment, DeploymentStep

    t0 = time.perf_counter()
    User = get_user_model()
    people = [User.objects.get_or_create(username=f"user{i:03d}")[0].pk for i in range(40)]
    for order, slug in enumerate(ENVIRONMENTS):
        Environment.objects.get_or_create(slug=slug, defaults={"name": slug.title(),
                                                               "order": order})
    envs = list(Environment.objects.filter(slug__in=ENVIRONMENTS).order_by("order")
                .values_list("pk", flat=True))
    for slug in APPLICATIONS:
        Application.objects.get_or_create(slug=slug, defaults={"name": slug.title()})
    app_ids = list(Application.objects.filter(slug__in=APPLICATIONS).order_by("slug")
                   .values_list("pk", flat=True))

    def base(model) -> int:
        return model.objects.order_by("-id").values_list("id", flat=True).first() or 0

    span = f"interval '{365 * years - 1} days'"
    # A release goes to development, staging, then production: three deployments each.
    releases = count // 3 + 1
    r0, c0, d0, g0, a0, s0 = (base(m) for m in (Release, ChangeRequest, Deployment, Gate,
                                                 Approval, DeploymentStep))
    apps_arr = "ARRAY[" + ",".join(map(str, app_ids)) + "]"
    envs_arr = "ARRAY[" + ",".join(map(str, envs)) + "]"
    people_arr = "ARRAY[" + ",".join(map(str, people)) + "]"
    at = f"(now() - {span} + {span} * (g::float8 / {count}))"
    _insert_select(Release, {
        "id": f"{r0} + g", "application_id": f"({apps_arr})[1 + g % {len(app_ids)}]",
        # Unique across calls: a second call continues the numbering.
        "version": f"'2.' || ({r0} + g) || '.0'",
        "commit_sha": "md5(g::text)", "artifact_sha256": "md5(g::text) || md5(g::text)",
        "checks": "CASE WHEN g % 4 = 0 THEN '{\"security_scan\": {\"status\": \"passed\"}}'"
                  "::jsonb ELSE '{}'::jsonb END",
        "created_by_id": f"({people_arr})[1 + g % {len(people)}]",
        "created_at": f"(now() - {span} + {span} * (g::float8 * 3 / {count}))",
    }, f"generate_series(1, {releases}) AS g")
    # One change per deployment, by one of 40 people, approved by two others.
    _insert_select(ChangeRequest, {
        "id": f"{c0} + g", "release_id": f"{r0} + 1 + (g - 1) / 3",
        "environment_id": f"({envs_arr})[1 + (g - 1) % 3]",
        "status": "'deployed'", "risk": "'low'",
        "rollback_plan": "'Redeploy the previous release.'",
        "requested_by_id": f"({people_arr})[1 + g % {len(people)}]",
        "created_at": at, "submitted_at": at, "closed_at": at,
    }, f"generate_series(1, {count}) AS g")
    _insert_select(Gate, {
        "id": f"{g0} + g", "change_id": f"{c0} + (g + 1) / 2",
        "role": "CASE WHEN g % 2 = 1 THEN 'tech_lead' ELSE 'cab' END", "status": "'approved'",
    }, f"generate_series(1, {2 * count}) AS g")
    _insert_select(Approval, {
        "id": f"{a0} + g", "gate_id": f"{g0} + g", "change_id": f"{c0} + (g + 1) / 2",
        "approver_id": f"({people_arr})[1 + ((g + 1) / 2 + 1 + g % 2) % {len(people)}]",
        "decision": "'approved'", "decided_at": f"(now() - {span} + {span} * "
                                                f"(((g + 1) / 2)::float8 / {count}))",
    }, f"generate_series(1, {2 * count}) AS g")
    _insert_select(Deployment, {
        "id": f"{d0} + g", "application_id": f"({apps_arr})[1 + ((g - 1) / 3 + 1) % "
                                             f"{len(app_ids)}]",
        "environment_id": f"({envs_arr})[1 + (g - 1) % 3]",
        "release_id": f"{r0} + 1 + (g - 1) / 3", "change_id": f"{c0} + g",
        "status": "CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'cancelled' "
                  "ELSE 'succeeded' END",
        "progress": "100", "started_by_id": f"({people_arr})[1 + g % {len(people)}]",
        "created_at": at, "started_at": at, "finished_at": f"{at} + interval '4 minutes'",
    }, f"generate_series(1, {count}) AS g")
    _insert_select(DeploymentStep, {
        "id": f"{s0} + g", "deployment_id": f"{d0} + (g + 1) / 2",
        "position": "2 - g % 2",
        "name": "CASE WHEN g % 2 = 1 THEN 'backup' ELSE 'health_check' END",
        "title": "CASE WHEN g % 2 = 1 THEN 'Backup' ELSE 'Health check' END",
        "status": "'succeeded'",
    }, f"generate_series(1, {2 * count}) AS g")
    with connection.cursor() as cursor:
        for model in (Release, ChangeRequest, Gate, Approval, Deployment, DeploymentStep):
            cursor.execute(f'ANALYZE "{model._meta.db_table}"')
    # Written around the engine: the DORA figures' daily roll-ups are rebuilt from them.
    from reporting import rollups

    rollups.rebuild()
    print(f"generated {count} deployments in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def generate_open_changes(count: int) -> None:
    """``count`` changes waiting for approval, spread over the three environments, each
    with the pending gates its environment's standard policy asks for: the approvals
    inbox and the dashboard's "waiting for" of a busy portal. Requested by the
    generated people (user000...), so the demo's approvers see them in their inbox."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from approvals.models import ApprovalPolicy, ChangeRequest, Gate
    from catalog.models import Environment, Release

    t0 = time.perf_counter()
    User = get_user_model()
    people = [User.objects.get_or_create(username=f"user{i:03d}")[0].pk for i in range(40)]
    releases = list(Release.objects.filter(application__slug__in=APPLICATIONS)
                    .order_by("-id").values_list("pk", flat=True)[:300])
    if not releases:
        generate_deployments(30)
        releases = list(Release.objects.filter(application__slug__in=APPLICATIONS)
                        .order_by("-id").values_list("pk", flat=True)[:300])
    envs = list(Environment.objects.filter(slug__in=ENVIRONMENTS).order_by("order"))
    people_arr = "ARRAY[" + ",".join(map(str, people)) + "]"
    releases_arr = "ARRAY[" + ",".join(map(str, releases)) + "]"
    for index, env in enumerate(envs):
        share = count // len(envs) + (1 if index < count % len(envs) else 0)
        if not share:
            continue
        policy = ApprovalPolicy.objects.filter(environment=env, change_type="standard").first()
        gates = [(g.role, g.required) for g in policy.gates.all()] if policy else []
        c0 = ChangeRequest.objects.order_by("-id").values_list("id", flat=True).first() or 0
        at = f"(now() - interval '30 days' * (1 - g::float8 / {share}))"
        _insert_select(ChangeRequest, {
            "id": f"{c0} + g", "release_id": f"({releases_arr})[1 + g % {len(releases)}]",
            "environment_id": str(env.pk), "status": "'pending_approval'", "risk": "'medium'",
            "impact": "'Customers may see a short delay.'",
            "rollback_plan": "'Redeploy the previous release.'",
            "on_call_id": f"({people_arr})[1 + (g + 7) % {len(people)}]",
            "requested_by_id": f"({people_arr})[1 + g % {len(people)}]",
            "created_at": at, "submitted_at": at,
        }, f"generate_series(1, {share}) AS g")
        for role, required in gates:
            g0 = Gate.objects.order_by("-id").values_list("id", flat=True).first() or 0
            _insert_select(Gate, {
                "id": f"{g0} + g", "change_id": f"{c0} + g", "role": f"'{role}'",
                "required": str(required), "status": "'pending'",
            }, f"generate_series(1, {share}) AS g")
    with connection.cursor() as cursor:
        for model in (ChangeRequest, Gate):
            cursor.execute(f'ANALYZE "{model._meta.db_table}"')
    print(f"generated {count} open changes in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)


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


def api_client(user):
    """A REST client with a fresh bearer token of ``user``."""
    from rest_framework.test import APIClient

    from audit.trail import System
    from identity.services import api_token_issue

    _, raw = api_token_issue(actor=System("bench"), user=user, name=f"bench-{time.time_ns()}")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def measure_history(client, repeat: int) -> list[tuple[str, float, float, str]]:
    """The first page of the deployment history pages, filtered, against the bare
    SELECT of the same page."""
    from catalog.models import Application, Environment
    from deployments.models import Deployment

    if not Deployment.objects.exists():
        return []
    production = Environment.objects.get(slug="production").pk
    app = Application.objects.get(slug=APPLICATIONS[3])
    year_ago = datetime.now(UTC) - timedelta(days=365)
    month = f"since={year_ago:%Y-%m-%d}&until={year_ago + timedelta(days=30):%Y-%m-%d}"
    table = "deployments_deployment"
    cases = [
        ("auditor history, newest page", "/auditor/deployments/",
         f"SELECT * FROM {table} ORDER BY id DESC LIMIT 51", ()),
        ("auditor history, production", "/auditor/deployments/?environment=production",
         f"SELECT * FROM {table} WHERE environment_id = %s ORDER BY id DESC LIMIT 51",
         (production,)),
        ("auditor history, application + production + failed",
         f"/auditor/deployments/?application={app.slug}&environment=production&status=failed",
         f"SELECT * FROM {table} WHERE application_id = %s AND environment_id = %s "
         "AND status = 'failed' ORDER BY id DESC LIMIT 51", (app.pk, production)),
        ("auditor history, one requester", "/auditor/deployments/?requester=user007",
         f"SELECT * FROM {table} WHERE change_id IN (SELECT id FROM approvals_changerequest "
         "WHERE requested_by_id = (SELECT id FROM auth_user WHERE username = 'user007')) "
         "ORDER BY id DESC LIMIT 51", ()),
        ("auditor history, one approver", "/auditor/deployments/?approver=user011",
         f"SELECT * FROM {table} WHERE change_id IN (SELECT change_id FROM approvals_approval "
         "WHERE approver_id = (SELECT id FROM auth_user WHERE username = 'user011')) "
         "ORDER BY id DESC LIMIT 51", ()),
        ("auditor history, one month a year ago", f"/auditor/deployments/?{month}",
         f"SELECT * FROM {table} WHERE created_at >= %s AND created_at < %s "
         "ORDER BY id DESC LIMIT 51", (year_ago.date(), (year_ago + timedelta(days=30)).date())),
        ("deployments page, newest", "/deployments/",
         f"SELECT * FROM {table} ORDER BY created_at DESC, id DESC LIMIT 100", ()),
        ("deployments page, application + production",
         f"/deployments/?application={app.slug}&environment=production",
         f"SELECT * FROM {table} WHERE application_id = %s AND environment_id = %s "
         "ORDER BY created_at DESC, id DESC LIMIT 100", (app.pk, production)),
        ("deployments page, failed", "/deployments/?status=failed",
         f"SELECT * FROM {table} WHERE status = 'failed' "
         "ORDER BY created_at DESC, id DESC LIMIT 100", ()),
    ]
    results = []
    for name, url, sql, params in cases:
        def page(url=url):
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        results.append((name, timed(page, repeat), timed(bare(sql, params), repeat),
                        "first page, rendered"))
    return results


def measure(rows_target: int, repeat: int,
            skip_chain: bool = False) -> list[tuple[str, float, float, str]]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.test import Client

    from audit.models import AuditEvent
    from audit.trail import System, audit_record, verify_chain

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

    results += measure_history(client, repeat)

    # Exports: one environment over 60 days (about 270,000 events at 10 million), each
    # of the three formats, against a bare SELECT of the same rows; then, traced, the
    # peak of Python memory while streaming, which must not grow with the rows.
    since = datetime.now(UTC) - timedelta(days=400)
    until = since + timedelta(days=60)
    window = f"environment=staging&since={since:%Y-%m-%d}&until={until:%Y-%m-%d}"
    exports = [
        ("export JSON Lines", f"/audit/export.jsonl?{window}", client),
        ("export CSV", f"/audit/export.csv?{window}", client),
        ("API export CSV", f"/api/v1/audit-events/?format=csv&environment=staging"
         f"&since={since:%Y-%m-%d}T00:00:00Z&until={until:%Y-%m-%d}T00:00:00Z",
         api_client(auditor)),
    ]
    bare_export = bare("SELECT * FROM portal_auditevent WHERE environment = 'staging' "
                       "AND occurred_at >= %s AND occurred_at < %s", (since, until))
    bare_s = timed(bare_export, 3)
    for name, url, who in exports:
        streamed = {}

        def export(url=url, who=who, streamed=streamed):
            response = who.get(url)
            assert response.status_code == 200, response.status_code
            lines = size = 0
            for chunk in response.streaming_content:
                lines += chunk.count(b"\n")
                size += len(chunk)
            streamed.update(lines=lines, size=size)

        took = timed(export, 3)
        tracemalloc.start()
        export()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows = streamed["lines"] - (1 if "csv" in url else 0)
        results.append((f"{name}, one environment, 60 days", took, bare_s,
                        f"{rows} rows, {rows / took:,.0f} rows/s, "
                        f"{streamed['size'] / took / 1e6:.0f} MB/s, "
                        f"Python peak {peak / 1024:,.0f} KiB"))
    if skip_chain:
        print(f"measured at {total} events", file=sys.stderr)
        return results

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
    # Retention purge of everything older than two years, against a bare DELETE of the
    # same rows (trigger disabled, rolled back). A trail generated over two years has
    # nothing to purge yet (generate with --years 3 for a third of it).
    from audit.retention import audit_purge_expired, retention_days

    cutoff = datetime.now(UTC) - timedelta(days=retention_days())
    expired = AuditEvent.objects.filter(occurred_at__lt=cutoff).count()
    if not expired:
        print(f"measured at {total} events; none older than the retention", file=sys.stderr)
        return results

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
    parser.add_argument("--deployments", type=int, default=200_000)
    parser.add_argument("--years", type=float, default=2,
                        help="the span the generated events and deployments cover")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the database")
    parser.add_argument("--open-changes", type=int, default=450,
                        help="changes waiting for approval (the approvals inbox)")
    parser.add_argument("--generate-only", action="store_true",
                        help="build the data set and stop (bench/load_bench.py and "
                             "bench/page_bench.py measure it)")
    parser.add_argument("--skip-chain", action="store_true",
                        help="pages and exports only: no writes, verify_audit or purge")
    args = parser.parse_args()
    setup(args.database, args.fresh)
    from audit.models import AuditEvent
    from deployments.models import Deployment

    have = AuditEvent.objects.count()
    if have < args.rows:
        generate(args.rows - have, args.years)
    have = Deployment.objects.count()
    if have < args.deployments:
        generate_deployments(args.deployments - have, args.years)
    from approvals.models import ChangeRequest

    have = ChangeRequest.objects.filter(status="pending_approval").count()
    if have < args.open_changes:
        generate_open_changes(args.open_changes - have)
    if args.generate_only:
        return
    print("| measurement | portal (s) | bare stack (s) | ratio | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, ours, base, note in measure(args.rows, args.repeat, args.skip_chain):
        print(f"| {name} | {ours:.4f} | {base:.4f} | {ours / base:.1f}x | {note} |")


if __name__ == "__main__":
    main()
