"""Webhooks (generic JSON and Slack-compatible), sent by a real Celery worker, once."""

from __future__ import annotations

import pytest

from notifications import services
from notifications.models import Notification
from notifications.tasks import notification_send
from tests.conftest import wait_for, worker_finished
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)
# Tests that send by calling the service themselves keep their rows uncommitted (no
# transaction=True): committed rows are queued to the session's real worker on commit,
# which would race the test for the same rows.


def subscribe(demo, channel, url, kinds=()):
    return services.subscription_create(actor=demo.admin, channel=channel, target=url,
                                        kinds=list(kinds))


@pytest.mark.django_db
def test_generic_and_slack_webhooks_carry_the_message(demo, receiver):
    subscribe(demo, "webhook", f"{receiver.url}/json", ["approval_request"])
    subscribe(demo, "slack", f"{receiver.url}/slack", ["approval_request"])
    change = request_change(demo.engineer, "staging", release=ReleaseFactory())
    for pk in Notification.objects.filter(channel__in=["webhook", "slack"]).values_list(
            "pk", flat=True):
        assert services.notification_send(notification_id=pk) == "sent"
    by_path = {r["path"]: r for r in receiver.received}
    generic = by_path["/json"]["body"]
    assert generic["kind"] == "approval_request" and generic["change"] == change.pk
    assert generic["fields"]["change"] == change.reference
    assert generic["subject"].startswith("[APPROVAL NEEDED]")
    slack = by_path["/slack"]["body"]
    assert slack["text"].startswith("[APPROVAL NEEDED]")
    assert slack["blocks"][0]["type"] == "header"
    assert change.reference in slack["blocks"][1]["text"]["text"]
    assert by_path["/json"]["key"].startswith("notification-")


@pytest.mark.django_db
def test_a_transient_failure_is_retried_and_sent_once(demo, receiver):
    subscribe(demo, "webhook", f"{receiver.url}/fail", ["approval_request"])
    request_change(demo.engineer, "staging", release=ReleaseFactory())
    notice = Notification.objects.get(channel="webhook")
    assert services.notification_send(notification_id=notice.pk) == "retry"
    notice.refresh_from_db()
    assert notice.status == "pending" and "503" in notice.last_error
    assert services.notification_send(notification_id=notice.pk) == "sent"
    assert services.notification_send(notification_id=notice.pk) == "skipped"
    assert len(receiver.received) == 1


@pytest.mark.django_db
def test_a_refusing_receiver_fails_without_retrying(demo, receiver):
    subscribe(demo, "webhook", "http://127.0.0.1:9/refused", ["approval_request"])  # no one
    request_change(demo.engineer, "staging", release=ReleaseFactory())
    notice = Notification.objects.get(channel="webhook")
    for _ in range(services.MAX_ATTEMPTS):
        services.notification_send(notification_id=notice.pk)
    notice.refresh_from_db()
    assert notice.status == "failed" and notice.attempts == services.MAX_ATTEMPTS


def test_subscriptions_refuse_bad_targets(demo):
    from core.errors import Invalid

    with pytest.raises(Invalid):
        subscribe(demo, "webhook", "ftp://example.com/hook")
    with pytest.raises(Invalid):
        subscribe(demo, "email", "not-an-address")
    with pytest.raises(Invalid):
        services.subscription_create(actor=demo.admin, channel="email", target="a@b.example",
                                     kinds=["gossip"])


@pytest.mark.worker
def test_real_worker_sends_a_twice_delivered_notification_once(demo, receiver,
                                                               celery_worker_process):
    subscribe(demo, "webhook", f"{receiver.url}/json", ["approval_request"])
    request_change(demo.engineer, "staging", release=ReleaseFactory())
    notice = Notification.objects.get(channel="webhook")
    # Queued on commit already; the broker delivers it twice more.
    again = [notification_send.delay(notice.pk).id, notification_send.delay(notice.pk).id]
    wait_for(lambda: Notification.objects.get(pk=notice.pk).status == "sent", timeout=30)
    # Emails to the approvers went out through the worker's console backend as well.
    wait_for(lambda: not Notification.objects.filter(status__in=["pending", "sending"]).exists(),
             timeout=30)
    # Both extra deliveries have run to their end on the worker: a duplicate they sent
    # would have reached the receiver before that.
    wait_for(lambda: all(worker_finished(task_id) for task_id in again), timeout=60)
    assert [r["path"] for r in receiver.received] == ["/json"]
    notice.refresh_from_db()
    assert notice.attempts == 1
