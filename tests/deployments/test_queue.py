"""Deployments queue behind a running one of the same application and environment.

Most tests need no worker: the test transaction never commits, so nothing is sent;
the run is called directly where a worker would pick it up. The race test commits, with
real threads and transactions.
"""

import threading

import pytest
from django.db import connection, transaction
from django.test import TestCase

from audit.models import AuditEvent
from deployments import selectors, services
from deployments.models import Deployment, DeploymentStep


def _running(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(status="running", attempts=1)
    deployment.refresh_from_db()
    return deployment


def _end(deployment, status="succeeded"):
    """End ``deployment`` as its worker does; what runs after commit runs too."""
    with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk)
        services.deployment_finish(deployment=locked, status=status,
                                   reason="" if status == "succeeded" else "it broke")


def _fresh(*deployments):
    for d in deployments:
        d.refresh_from_db()
    return deployments


@pytest.mark.django_db
def test_a_request_behind_a_running_deployment_queues_and_starts_when_it_ends(fleet, demo,
                                                                              api):
    shop = fleet(targets=1, environment="staging")
    head = _running(shop.start("1.0.0"))
    second, third = shop.start("1.1.0"), shop.start("1.2.0")

    assert head.holds_target and not second.holds_target and not third.holds_target
    assert services.queue_position(second) == 1 and services.queue_position(third) == 2
    state = selectors.queue_state(third)
    assert (state["position"], state["waiting_for"], state["head"]) == (2, head.pk, head)
    queued = AuditEvent.objects.get(action="deployment.queued", object_id=str(third.pk))
    assert queued.after["waits_for"] == head.pk and queued.after["queue_position"] == 2
    # A worker handed a waiting deployment leaves it alone: its turn has not come.
    assert services.deployment_run(deployment_id=third.pk) is None
    assert Deployment.objects.get(pk=third.pk).status == "queued"
    assert not DeploymentStep.objects.filter(deployment=third).exclude(
        status="pending").exists()
    body = api(demo.oncall).get(f"/api/v1/deployments/{third.pk}/").json()
    assert body["status"] == "queued" and body["queue_position"] == 2
    assert body["waiting_for"] == head.pk

    _end(head)  # the next one takes the target once the head's end is committed
    second, third = _fresh(second, third)
    assert second.holds_target and second.status == "queued"
    assert services.queue_position(third) == 1
    assert selectors.queue_state(third)["waiting_for"] == second.pk

    _end(_running(second), "failed")  # any end starts the next
    (third,) = _fresh(third)
    assert third.holds_target and services.queue_position(third) is None


@pytest.mark.django_db
def test_cancelling_a_queued_deployment_moves_the_others_up(fleet, demo, api):
    shop = fleet(targets=1, environment="staging")
    head = _running(shop.start("1.0.0"))
    second, third = shop.start("1.1.0"), shop.start("1.2.0")

    refused = api(demo.qa).post(f"/api/v1/deployments/{second.pk}/cancel", {},
                                    format="json")
    assert refused.status_code in (403, 404)
    assert Deployment.objects.get(pk=second.pk).status == "queued"

    response = api(demo.oncall).post(f"/api/v1/deployments/{second.pk}/cancel",
                                     {"reason": "not this one"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert services.queue_position(third) == 1
    event = AuditEvent.objects.get(action="deployment.cancelled", object_id=str(second.pk))
    assert event.after["queue_position"] == 1 and event.reason == "not this one"
    # The head still holds the target: cancelling one behind it starts nothing.
    (third,) = _fresh(third)
    assert not third.holds_target and head.holds_target


@pytest.mark.django_db
def test_an_environment_can_run_only_the_newest_queued_deployment(fleet, demo):
    shop = fleet(targets=1, environment="staging")
    shop.environment.supersede_queued = True
    shop.environment.save()
    head = _running(shop.start("1.0.0"))
    older, old = shop.start("1.1.0"), shop.start("1.2.0")

    newest = shop.start("1.3.0")

    older, old, head = _fresh(older, old, head)
    assert older.status == old.status == "cancelled"
    assert "superseded by a newer deployment" in older.failure_reason
    assert "1.3.0" in old.failure_reason
    assert set(AuditEvent.objects.filter(action="deployment.superseded")
               .values_list("object_id", flat=True)) == {str(older.pk), str(old.pk)}
    assert head.status == "running"  # a running one is never superseded
    assert services.queue_position(newest) == 1


@pytest.mark.django_db
def test_without_the_option_every_queued_deployment_runs_in_turn(fleet, demo):
    shop = fleet(targets=1, environment="staging")
    _running(shop.start("1.0.0"))
    older, newest = shop.start("1.1.0"), shop.start("1.2.0")
    assert [services.queue_position(d) for d in (older, newest)] == [1, 2]
    assert not AuditEvent.objects.filter(action="deployment.superseded").exists()


@pytest.mark.django_db
def test_a_rollback_goes_before_deployments_waiting_in_the_queue(fleet, demo):
    shop = fleet(targets=1, environment="staging")
    good = shop.start("1.0.0")
    Deployment.objects.filter(pk=good.pk).update(status="succeeded")
    bad = _running(shop.start("1.1.0"))
    waiting = shop.start("1.2.0")

    rollback = services.deployment_rollback(actor=demo.oncall, deployment=bad,
                                            reason="errors are up")

    rollback, waiting = _fresh(rollback, waiting)
    assert rollback.holds_target and rollback.kind == "rollback"
    assert rollback.release.version == "1.0.0"
    assert not waiting.holds_target and services.queue_position(waiting) == 1
    _end(rollback)
    (waiting,) = _fresh(waiting)
    assert waiting.holds_target


@pytest.mark.django_db
def test_the_sweep_starts_a_queue_whose_head_was_lost(fleet, demo):
    shop = fleet(targets=1, environment="staging")
    head = _running(shop.start("1.0.0"))
    waiting = shop.start("1.1.0")
    # The head ended without starting the next one (an operator's repair in the database).
    Deployment.objects.filter(pk=head.pk).update(status="failed")

    services.deployments_resume_stale()

    (waiting,) = _fresh(waiting)
    assert waiting.holds_target and waiting.status == "queued"


@pytest.mark.django_db(transaction=True)
def test_requests_at_once_queue_in_the_database_one_runs_the_others_wait(fleet, demo):
    """Eight deploy requests in eight threads and transactions at once: exactly one holds
    the target, seven wait with positions 1..7; ending each head starts the next, first in
    first out, each once."""
    from catalog.models import Environment

    # An environment no worker consumes: the deployments stay where the queue puts them.
    Environment.objects.create(slug="queue-race", name="Queue race", order=50)
    shop = fleet(targets=1, environment="queue-race")
    releases = [shop.release(f"3.{i}.0") for i in range(8)]
    barrier = threading.Barrier(len(releases))
    created, errors = [], []

    def request(release):
        try:
            barrier.wait()
            with transaction.atomic():
                created.append(services.deployment_create(
                    actor=demo.oncall, release=release, environment=shop.environment).pk)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(r,)) for r in releases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and len(created) == 8
    heads = list(Deployment.objects.filter(pk__in=created, holds_target=True))
    assert len(heads) == 1
    waiting = Deployment.objects.filter(pk__in=created, holds_target=False)
    assert sorted(services.queue_position(d) for d in waiting) == list(range(1, 8))
    order = [heads[0].pk]
    for _ in range(7):
        _end(Deployment.objects.get(pk=order[-1]))
        nxt = Deployment.objects.get(pk__in=created, holds_target=True, status="queued")
        order.append(nxt.pk)
    expected = list(Deployment.objects.filter(pk__in=created)
                    .order_by("created_at", "id").values_list("pk", flat=True))
    assert order == expected  # first in, first out
    assert len(set(order)) == 8


@pytest.mark.django_db
def test_the_change_page_and_the_dashboard_show_the_queue(demo, client):
    from tests.factories import ReleaseFactory, request_change

    head = _running(services.deployment_create(
        actor=demo.oncall, release=ReleaseFactory(), environment=_env("development")))
    change = request_change(demo.engineer, "development")
    client.force_login(demo.engineer)
    response = client.post(f"/changes/{change.pk}/deploy", follow=True)
    waiting = Deployment.objects.get(change_id=change.pk)
    assert not waiting.holds_target
    page = response.content.decode()
    assert f"queued behind deployment #{head.pk} (position 1)" in page
    assert 'id="deployment-queue"' in page and "queued, position 1" in page
    assert f"#{head.pk}</a> ({head.release.version}, running)" in page

    board = client.get("/dashboard/").content.decode()
    assert 'id="deployment-queue"' in board
    assert f"#{waiting.pk}</a>" in board and f"#{head.pk}</a> {head.release.version}" in board


def _env(slug):
    from catalog.models import Environment

    return Environment.objects.get(slug=slug)
