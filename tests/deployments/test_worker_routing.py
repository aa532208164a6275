"""Deployments go to their environment's queue (deploy.<slug>); a worker runs only the
environments whose queues it consumes, that is whose credentials it holds (SOP 10.2).

Two real workers: one for development and staging (module-scoped), and a production
worker started in the middle of the test.
"""

import pytest
import redis
from django.conf import settings

from catalog.models import Environment
from deployments.models import Deployment
from tests.conftest import start_celery_worker, stop_celery_worker, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SLUGS = {"development": "rt-development", "staging": "rt-staging",
         "production": "rt-production"}


@pytest.fixture(scope="module")
def lower_worker(django_db_setup):
    """A worker holding development and staging credentials only."""
    proc, log = start_celery_worker(
        queues=f"deploy.{SLUGS['development']},deploy.{SLUGS['staging']}", name="lower")
    yield log
    stop_celery_worker(proc)
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("deploy.rt-*"):
        client.delete(key)


def test_a_production_deployment_waits_for_a_production_worker_and_only_it_runs_it(
        demo, fleet, lower_worker):
    for order, (name, slug) in enumerate(SLUGS.items(), start=10):
        Environment.objects.create(slug=slug, name=f"Routing {name}", order=order)
    dev = fleet(targets=1, environment=SLUGS["development"])
    staging = fleet(targets=1, environment=SLUGS["staging"])
    prod = fleet(targets=1, environment=SLUGS["production"])

    to_production = prod.start("1.0.0")
    to_development, to_staging = dev.start("1.0.0"), staging.start("1.0.0")
    assert dev.wait(to_development, 60).status == "succeeded"
    assert staging.wait(to_staging, 60).status == "succeeded"

    # The lower worker goes on taking work from its own queues after the production
    # deployment was queued (a small task on each, run to its end, one after the other),
    # and still has not taken the production deployment.
    from core.tasks import idempotency_keys_purge

    for slug in (SLUGS["development"], SLUGS["staging"]):
        marker = idempotency_keys_purge.apply_async(queue=f"deploy.{slug}").id
        wait_for(lambda marker=marker: f"[{marker}] succeeded" in lower_worker.read_text(),
                 timeout=60)
    to_production.refresh_from_db()
    assert to_production.status == "queued" and to_production.attempts == 0
    assert not to_production.steps.exclude(status="pending").exists()
    assert to_production.task_id not in lower_worker.read_text()
    assert to_development.task_id in lower_worker.read_text()
    # Not lost either: its message waits in the production queue.
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert client.llen(f"deploy.{SLUGS['production']}") == 1

    proc, production_log = start_celery_worker(queues=f"deploy.{SLUGS['production']}",
                                               name="production")
    try:
        assert prod.wait(to_production, 60).status == "succeeded"
        wait_for(lambda: to_production.task_id in production_log.read_text(), timeout=10)
        assert to_production.task_id not in lower_worker.read_text()
        assert Deployment.objects.get(pk=to_production.pk).attempts == 1
    finally:
        stop_celery_worker(proc)
