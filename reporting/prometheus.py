"""The Prometheus endpoint, ``GET /metrics``: request latency and figures read at scrape time.

Request latency is observed as requests are answered (``core.request_metrics``); under
gunicorn every worker process writes it to ``PROMETHEUS_MULTIPROC_DIR`` and a scrape
adds the processes up (``MultiProcessCollector``). Everything else is read when
Prometheus scrapes, so every web process answers the same figures whichever one is asked:

- from PostgreSQL, in a fixed number of queries whatever the data
  (``SCRAPE_QUERIES``): deployments by status and environment, the age of the newest
  audit event, and three histograms over the recent window
  (``PORTAL_METRICS_WINDOW_HOURS``): request to approval, approval to deployment start,
  and dispatch (deployment created to its first step started);
- from Redis: the length of the ``celery`` queue and of every ``deploy.*`` queue.

Who may read it: ``PORTAL_METRICS_TOKEN`` (a bearer token, compared in constant time)
and/or ``PORTAL_METRICS_ALLOW`` (client networks). Each one that is set must pass; with
neither set the endpoint does not exist (404) unless DEBUG is on, when loopback
clients may read it. docs/observability.md lists every metric.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog.models import Environment
from deployments.models import Deployment, DeploymentStep

logger = logging.getLogger(__name__)

# Queries one scrape runs, whatever the number of rows (tests assert it).
SCRAPE_QUERIES = 5

# Seconds. Approvals take minutes to days; dispatch should take well under a second.
DECISION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
DISPATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# kombu's Redis transport: a queue is a list named after it; messages sent with a
# priority go to "<queue>\x06\x16<priority>".
KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITIES = (3, 6, 9)


# --- access -----------------------------------------------------------------------------

def _client_allowed(request, networks) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _token_matches(request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time; a wrong scheme compares an empty value all the same.
    presented = presented.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(presented.encode(), token.encode())


def refusal(request) -> HttpResponse | None:
    """None when this client may read the metrics, else the answer that refuses it."""
    token = settings.PORTAL_METRICS_TOKEN
    networks = settings.PORTAL_METRICS_ALLOW
    if not token and not networks:
        if not settings.DEBUG:
            raise Http404("metrics are not enabled")
        networks = LOOPBACK
    if networks and not _client_allowed(request, networks):
        return HttpResponse("metrics: this address may not read them\n", status=403,
                            content_type="text/plain")
    if token and not _token_matches(request, token):
        response = HttpResponse("metrics: a valid bearer token is required\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return None


# --- figures from the database -----------------------------------------------------------

def _histogram_query(inner_sql: str, buckets) -> str:
    """Per environment: a count per bucket, the count and the sum of ``seconds``."""
    counts = ", ".join(f"count(*) FILTER (WHERE seconds <= {float(b)!r})" for b in buckets)
    return (f"SELECT environment, {counts}, count(*), coalesce(sum(seconds), 0) "
            f"FROM ({inner_sql}) AS t GROUP BY environment ORDER BY environment")


def _approved_changes_sql(where_change: str) -> str:
    """Changes that were approved, with the time of their last approving decision."""
    change = ChangeRequest._meta.db_table
    approval = Approval._meta.db_table
    approved = [ChangeRequest.Status.APPROVED, ChangeRequest.Status.SCHEDULED,
                ChangeRequest.Status.DEPLOYING, ChangeRequest.Status.DEPLOYED,
                ChangeRequest.Status.FAILED, ChangeRequest.Status.ROLLED_BACK]
    statuses = ", ".join(f"'{s}'" for s in approved)
    return (f"SELECT c.id, c.environment_id, c.submitted_at, max(a.decided_at) AS approved_at "
            f"FROM {change} c JOIN {approval} a ON a.change_id = c.id "
            f"WHERE a.decision = 'approved' AND a.withdrawn_at IS NULL "
            f"AND c.submitted_at IS NOT NULL AND c.status IN ({statuses}) AND {where_change} "
            f"GROUP BY c.id")


def _histogram(name: str, documentation: str, rows, buckets) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["environment"])
    for environment, *values in rows:
        bucket_counts, count, total = values[:len(buckets)], values[-2], values[-1]
        family.add_metric([environment],
                          [(repr(float(b)), c) for b, c in zip(buckets, bucket_counts,
                                                                  strict=True)]
                          + [("+Inf", count)], float(total))
    return family


class DatabaseCollector:
    """Figures read from PostgreSQL at scrape time, in ``SCRAPE_QUERIES`` queries."""

    def collect(self):
        environment = Environment._meta.db_table
        deployment = Deployment._meta.db_table
        step = DeploymentStep._meta.db_table
        since = timezone.now() - timedelta(hours=settings.PORTAL_METRICS_WINDOW_HOURS)
        window = f"{settings.PORTAL_METRICS_WINDOW_HOURS:g} hours"

        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT e.slug, d.status, count(d.id) FROM {environment} e "
                f"LEFT JOIN {deployment} d ON d.environment_id = e.id "
                f"GROUP BY e.slug, d.status ORDER BY e.slug, d.status")
            by_status = cursor.fetchall()

            # Only changes with a decision in the window can have been approved in it.
            recent_decided = (f"c.id IN (SELECT change_id FROM {Approval._meta.db_table} "
                              f"WHERE decided_at >= %s)")
            cursor.execute(_histogram_query(
                f"SELECT e.slug AS environment, "
                f"extract(epoch FROM ch.approved_at - ch.submitted_at) AS seconds "
                f"FROM ({_approved_changes_sql(recent_decided)}) ch "
                f"JOIN {environment} e ON e.id = ch.environment_id "
                f"WHERE ch.approved_at >= %s", DECISION_BUCKETS), [since, since])
            to_approval = cursor.fetchall()

            recent_started = (f"c.id IN (SELECT change_id FROM {deployment} "
                              f"WHERE started_at >= %s AND change_id IS NOT NULL)")
            cursor.execute(_histogram_query(
                f"SELECT e.slug AS environment, "
                f"greatest(0, extract(epoch FROM d.started_at - ch.approved_at)) AS seconds "
                f"FROM {deployment} d "
                f"JOIN ({_approved_changes_sql(recent_started)}) ch ON ch.id = d.change_id "
                f"JOIN {environment} e ON e.id = d.environment_id "
                f"WHERE d.kind = 'deploy' AND d.started_at >= %s", DECISION_BUCKETS),
                [since, since])
            to_start = cursor.fetchall()

            cursor.execute(_histogram_query(
                f"SELECT e.slug AS environment, "
                f"greatest(0, extract(epoch FROM min(s.started_at) - d.created_at)) AS seconds "
                f"FROM {deployment} d JOIN {step} s ON s.deployment_id = d.id "
                f"JOIN {environment} e ON e.id = d.environment_id "
                f"WHERE d.created_at >= %s AND s.started_at IS NOT NULL "
                f"GROUP BY d.id, e.slug", DISPATCH_BUCKETS), [since])
            dispatch = cursor.fetchall()

            cursor.execute(f"SELECT max(occurred_at) FROM {AuditEvent._meta.db_table}")
            newest_audit = cursor.fetchone()[0]

        deployments = GaugeMetricFamily(
            "portal_deployments", "Deployments (and rollbacks) by environment and status.",
            labels=["environment", "status"])
        statuses = [s.value for s in Deployment.Status]
        counts: dict[str, dict[str, int]] = {}
        for slug, status, count in by_status:
            per_env = counts.setdefault(slug, dict.fromkeys(statuses, 0))
            if status is not None:
                per_env[status] = count
        for slug, per_env in counts.items():
            for status, count in per_env.items():
                deployments.add_metric([slug, status], count)
        yield deployments

        yield _histogram(
            "portal_change_request_to_approval_seconds",
            f"Changes approved in the last {window}: time from submission to the last "
            f"approving decision.", to_approval, DECISION_BUCKETS)
        yield _histogram(
            "portal_change_approval_to_deployment_start_seconds",
            f"Deployments started in the last {window}: time from their change's last "
            f"approving decision to the start of the run.", to_start, DECISION_BUCKETS)
        yield _histogram(
            "portal_deployment_dispatch_seconds",
            f"Deployments created in the last {window}: time from creation (queued) to "
            f"their first step starting.", dispatch, DISPATCH_BUCKETS)

        window_gauge = GaugeMetricFamily(
            "portal_metrics_window_seconds",
            "The window the *_seconds histograms read from the database cover.")
        window_gauge.add_metric([], settings.PORTAL_METRICS_WINDOW_HOURS * 3600)
        yield window_gauge

        if newest_audit is not None:
            age = GaugeMetricFamily(
                "portal_audit_newest_event_age_seconds",
                "Seconds since the newest audit event was written.")
            age.add_metric([], max(0.0, (timezone.now() - newest_audit).total_seconds()))
            yield age


# --- figures from Redis ---------------------------------------------------------------

_redis_clients: dict[str, redis.Redis] = {}


def _redis():
    """One client per broker address (``REDIS_URL``), made at the first scrape."""
    url = settings.REDIS_URL
    if url not in _redis_clients:
        _redis_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1,
                                                   socket_timeout=2)
    return _redis_clients[url]


def _configured_queues() -> set[str]:
    names = {getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery") or "celery"}
    for queue in getattr(settings, "CELERY_TASK_QUEUES", None) or ():
        name = queue if isinstance(queue, str) else getattr(queue, "name", None)
        if name:
            names.add(name)
    return names


def queue_names(client) -> set[str]:
    """``celery``, the queues the settings name, and every ``deploy.*`` queue in Redis."""
    names = _configured_queues()
    for key in client.scan_iter(match="deploy.*", count=1000, _type="list"):
        names.add(key.decode(errors="replace").split(KOMBU_SEP)[0])
    return names


class QueueCollector:
    """Messages waiting in each Celery queue (Redis LLEN), read at scrape time."""

    def collect(self):
        up = GaugeMetricFamily("portal_broker_up",
                               "1 when the broker (Redis) answered this scrape, else 0.")
        try:
            client = _redis()
            names = sorted(queue_names(client))
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
                for priority in KOMBU_PRIORITIES:
                    pipe.llen(f"{name}{KOMBU_SEP}{priority}")
            lengths = pipe.execute()
        except redis.RedisError as exc:
            logger.warning("metrics: cannot read queue lengths: %s", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        family = GaugeMetricFamily("portal_celery_queue_length",
                                   "Messages waiting in a Celery queue (not yet taken by a "
                                   "worker).", labels=["queue"])
        per_queue = 1 + len(KOMBU_PRIORITIES)
        for i, name in enumerate(names):
            family.add_metric([name], sum(lengths[i * per_queue:(i + 1) * per_queue]))
        yield family


class _ProcessRegistry:
    """This process's own metrics (single-process servers: ``manage.py run``, tests)."""

    def collect(self):
        yield from REGISTRY.collect()


def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(DatabaseCollector())
    registry.register(QueueCollector())
    return registry


@require_GET
def metrics(request):
    """Prometheus text exposition, to clients the settings allow."""
    refused = refusal(request)
    if refused is not None:
        return refused
    # The text format Prometheus asks for in Accept (OpenMetrics too), else 0.0.4.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry()), content_type=content_type)
