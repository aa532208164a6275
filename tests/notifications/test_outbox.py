"""The notifications outbox: every message is a row written in the transaction of the
decision it reports, sent by a task queued on commit or, when that never came, by the
beat's sweep; each row is sent at most once, a rolled-back decision sends nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from approvals import services as approvals
from approvals.models import ChangeRequest
from core import dispatch
from notifications import services
from notifications.models import Kind, Notification
from notifications.tasks import notification_send, notifications_send_unsent
from tests.conftest import WORKER_TEST_ENV, wait_for
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


def subscribe(demo, url, kinds):
    return services.subscription_create(actor=demo.admin, channel="webhook", target=url,
                                        kinds=list(kinds))


def paths(receiver) -> list[str]:
    return [r["path"] for r in receiver.received]


def drained(receiver, n: int = 1) -> None:
    """Wait until the worker has run every task queued before this call: one worker
    process takes tasks one at a time, in order, so when a message queued last
    (the sentinel) arrives, the tasks queued before it have run."""
    sentinel = Notification.objects.create(
        kind=Kind.APPROVAL_REQUEST, channel="webhook", recipient=f"{receiver.url}/sentinel",
        event_key=f"sentinel:{n}", subject="sentinel", body="sentinel")
    notification_send.delay(sentinel.pk)
    wait_for(lambda: paths(receiver).count("/sentinel") == n, timeout=30)


def decide_in_a_process_that_dies_after_commit(change, role: str, comment: str) -> int:
    """Reject ``change`` in another process that commits the decision and exits at once,
    before anything queued for after the commit runs (the send of its messages)."""
    db = connection.settings_dict
    env = dict({**WORKER_TEST_ENV, **os.environ},
               DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
                            f"{db['PORT']}/{db['NAME']}",
               REDIS_URL=settings.REDIS_URL, DJANGO_SETTINGS_MODULE="portal.settings")
    script = f"""
import os
import django
django.setup()
from django.contrib.auth import get_user_model
from django.db import transaction
from approvals import services
from approvals.models import ChangeRequest
from core import dispatch
change = ChangeRequest.objects.get(pk={change.pk})
with transaction.atomic():
    # Registered first, so it runs first once the decision has committed.
    transaction.on_commit(lambda: os._exit(17))
    services.gate_reject(actor=get_user_model().objects.get(username="techlead"),
                         change=change, role={role!r}, comment={comment!r})
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=settings.BASE_DIR)
    assert done.returncode == 17, done.stderr[-3000:]
    return done.returncode


@pytest.mark.worker
def test_a_message_whose_send_was_lost_with_its_process_is_sent_by_the_sweep_once(
        demo, receiver, celery_worker_process):
    subscribe(demo, f"{receiver.url}/rejected", ["rejected"])
    change = request_change(demo.engineer, "staging", release=ReleaseFactory())

    decide_in_a_process_that_dies_after_commit(change, "tech_lead", "Not tested enough")

    # The decision and its messages committed together; nothing was queued to send them.
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.REJECTED
    rows = Notification.objects.filter(kind=Kind.REJECTED, change_id=change.pk)
    assert {(n.channel, n.status, n.attempts) for n in rows} == {
        ("email", "pending", 0), ("webhook", "pending", 0)}
    drained(receiver, 1)
    assert "/rejected" not in paths(receiver)

    # The sweep leaves a row to its queued task for a grace period; that has passed.
    rows.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    notifications_send_unsent.delay()
    wait_for(lambda: not rows.exclude(status="sent").exists(), timeout=30)
    assert paths(receiver).count("/rejected") == 1

    # The queued send arriving late after all, and the next sweeps, send nothing more.
    webhook = rows.get(channel="webhook")
    notification_send.delay(webhook.pk)
    notifications_send_unsent.delay()
    notifications_send_unsent.delay()
    drained(receiver, 2)
    assert paths(receiver).count("/rejected") == 1
    assert {n.attempts for n in rows} == {1}
    sent = receiver.received[paths(receiver).index("/rejected")]
    assert sent["body"]["kind"] == "rejected" and "Not tested enough" in sent["body"]["text"]


@pytest.mark.worker
def test_a_rolled_back_decision_sends_nothing(demo, receiver, celery_worker_process):
    subscribe(demo, f"{receiver.url}/rejected", ["rejected"])
    change = request_change(demo.engineer, "staging", release=ReleaseFactory())

    class Crash(Exception):
        pass

    with pytest.raises(Crash), transaction.atomic():
        approvals.gate_reject(actor=demo.techlead, change=change, role="tech_lead",
                              comment="Rolled back with what it wrote")
        # Written inside the decision's transaction...
        assert Notification.objects.filter(kind=Kind.REJECTED).count() == 2
        raise Crash

    # ... and gone with it: no row, no send queued, nothing for the sweep.
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert not Notification.objects.filter(kind=Kind.REJECTED).exists()
    Notification.objects.filter(status="pending").update(
        next_attempt_at=timezone.now() - timedelta(minutes=5))
    notifications_send_unsent.delay()
    drained(receiver, 1)
    assert "/rejected" not in paths(receiver)


@pytest.mark.worker
def test_the_reopened_approval_mail_is_an_outbox_row_sent_by_the_worker(
        demo, receiver, celery_worker_process):
    subscribe(demo, f"{receiver.url}/reopened", ["approval_reopened"])
    change = request_change(demo.engineer, "staging", release=ReleaseFactory())
    approvals.gate_approve(actor=demo.techlead, change=change, role="tech_lead")

    approvals.change_request_update(actor=demo.engineer, change=change, strategy="canary")

    rows = Notification.objects.filter(kind=Kind.APPROVAL_REOPENED, change_id=change.pk)
    email = rows.get(channel="email")
    assert email.recipient == demo.techlead.email
    assert email.subject == f"{change.reference}: your tech lead approval was reopened"
    assert "strategy" in email.body
    wait_for(lambda: not rows.exclude(status="sent").exists(), timeout=30)
    assert paths(receiver) == ["/reopened"]
    assert {n.attempts for n in rows} == {1}


@pytest.fixture
def sends_never_queued(settings):
    """The sends queued on commit never reach a worker (the process died, the broker
    was down): they are held here, and only the sweep sends, in this process."""
    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()
    yield
    dispatch.clear_held()


def test_a_transient_failure_is_retried_when_due_and_not_before(demo, receiver,
                                                                 sends_never_queued):
    subscribe(demo, f"{receiver.url}/fail", ["approval_request"])
    request_change(demo.engineer, "staging", release=ReleaseFactory())
    hook = Notification.objects.get(channel="webhook")
    # Its send was queued on commit, and never reaches a worker.
    assert hook.pk in [h.args[0] for h in dispatch.held(notification_send.name)]
    assert services.notification_send(notification_id=hook.pk) == "retry"
    hook.refresh_from_db()
    assert (hook.status, hook.attempts) == ("pending", 1)
    now = timezone.now()
    assert hook.next_attempt_at > now

    # Not due yet: the sweep leaves it (to the task's own retry).
    assert hook.pk not in services.notifications_send_unsent(now=now, grace=timedelta(0))
    assert paths(receiver) == []
    # Due, and its retry lost: the sweep sends it, once.
    later = hook.next_attempt_at + timedelta(minutes=2)
    assert hook.pk in services.notifications_send_unsent(now=later)
    assert services.notifications_send_unsent(now=later) == []
    assert paths(receiver) == ["/fail"]
    hook.refresh_from_db()
    assert (hook.status, hook.attempts) == ("sent", 2)


def test_two_sweeps_at_once_send_each_message_once(demo, receiver, sends_never_queued):
    subscribe(demo, f"{receiver.url}/hook", ["approval_request"])
    for _ in range(3):
        request_change(demo.engineer, "staging", release=ReleaseFactory())
    Notification.objects.exclude(channel="webhook").delete()
    hooks = set(Notification.objects.values_list("pk", flat=True))
    assert len(hooks) == 3
    later = timezone.now() + timedelta(minutes=5)
    start = threading.Barrier(2)
    sent: list[list[int]] = []

    def sweep():
        try:
            start.wait(timeout=10)
            sent.append(services.notifications_send_unsent(now=later))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(sent[0] + sent[1]) == sorted(hooks)
    assert sorted(paths(receiver)) == ["/hook"] * 3
    assert set(Notification.objects.values_list("attempts", flat=True)) == {1}
