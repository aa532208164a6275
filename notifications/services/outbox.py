"""The outbox: writing the messages of an event, and sending each exactly once.

The messages of one event become ``Notification`` rows in the transaction that decided
it; their sending is queued on commit (the Celery task ``notification_send``), and the
beat task ``notifications_send_unsent`` sends the rows whose queued send never came.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F

from audit.trail import System, audit_record
from core import clock, dispatch
from notifications.models import Channel, Notification, redact_target
from notifications.services.content import Message
from notifications.services.subscriptions import subscription_recipient
from notifications.services.webhooks import (
    TransientError,
    slack_body,
    webhook_body,
    webhook_post,
)

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Transient failures wait 10 s, 20 s, 40 s, 80 s before the next attempt.
RETRY_BASE_SECONDS = 10
# The outbox sweep sends at most this many rows each time it runs.
OUTBOX_BATCH = 200


def notifications_queue(*, event_key: str, message: Message, change_id, deployment_id,
                        environment: str, people=(), subscriptions=()) -> list[int]:
    """Create the notification rows of one event (once) and queue their sending."""
    rows: dict[tuple[str, str], Notification] = {}
    for user in people:
        if user is None or not user.email:
            continue
        rows.setdefault((Channel.EMAIL, user.email), Notification(
            channel=Channel.EMAIL, recipient=user.email, recipient_name=user.get_username()))
    for subscription in subscriptions:
        recipient, name = subscription_recipient(subscription)
        if recipient:
            rows.setdefault((subscription.channel, recipient), Notification(
                channel=subscription.channel, recipient=recipient, recipient_name=name,
                subscription=subscription))
    for row in rows.values():
        row.kind = message.kind
        row.event_key = event_key
        row.change_id = change_id
        row.deployment_id = deployment_id
        row.environment = environment
        row.subject = message.subject[:300]
        row.body = message.body
        row.fields = message.fields
    # The unique (event_key, channel, recipient) makes an event handled twice harmless.
    Notification.objects.bulk_create(rows.values(), ignore_conflicts=True)
    ids = list(Notification.objects.filter(event_key=event_key, status=Notification.Status.PENDING,
                                           attempts=0).values_list("pk", flat=True))
    # After commit; should the process die first, or the broker refuse, the rows are
    # in the outbox and the sweep sends them (notifications_send_unsent).
    transaction.on_commit(lambda: _queue_sends(ids), robust=True)
    return ids


SEND_TASK = "notifications.tasks.notification_send"


def _queue_sends(ids: list[int]) -> None:
    """Hand each send to ``core.dispatch`` (a worker, this process, or held, as
    ``PORTAL_TASK_DISPATCH`` says)."""
    # By name: the tasks module imports the services, so the services name the task
    # rather than import it (core.dispatch imports it when it runs one in-process).
    for pk in ids:
        dispatch.enqueue(SEND_TASK, pk)


def _deliver(notification: Notification) -> None:
    if notification.channel == Channel.EMAIL:
        send_mail(notification.subject, notification.body, None, [notification.recipient])
    elif notification.channel == Channel.SLACK:
        webhook_post(notification.recipient, slack_body(notification), notification)
    else:
        webhook_post(notification.recipient, webhook_body(notification), notification)


def notification_send(*, notification_id: int) -> str:
    """Send one notification once. Returns "sent", "retry", "failed" or "skipped".

    The claim (pending -> sending) is committed before the message leaves: a second
    delivery of the same task finds the row claimed or sent and does nothing. A
    transient failure puts the row back to pending for the next try.
    """
    now = clock.now()
    # A conditional update settles two deliveries racing for the same row.
    claimed = Notification.objects.filter(
        pk=notification_id, status=Notification.Status.PENDING,
        attempts__lt=MAX_ATTEMPTS).update(status=Notification.Status.SENDING,
                                          attempts=F("attempts") + 1, claimed_at=now)
    if claimed != 1:
        return "skipped"
    notification = Notification.objects.get(pk=notification_id)
    try:
        _deliver(notification)
    except TransientError as exc:
        final = notification.attempts >= MAX_ATTEMPTS
        with transaction.atomic():
            Notification.objects.filter(pk=notification_id).update(
                status=Notification.Status.FAILED if final else Notification.Status.PENDING,
                last_error=str(exc)[:1000],
                next_attempt_at=clock.now() + retry_delay(notification.attempts))
            if final:
                _audit_outcome(notification, "notification.failed", str(exc))
        logger.warning("notification %s to %s not delivered (attempt %s): %s",
                       notification.pk, notification.channel, notification.attempts, exc)
        return "failed" if final else "retry"
    except Exception as exc:  # a refusal or a bad address: trying again will not help
        with transaction.atomic():
            Notification.objects.filter(pk=notification_id).update(
                status=Notification.Status.FAILED, last_error=str(exc)[:1000])
            _audit_outcome(notification, "notification.failed", str(exc))
        logger.warning("notification %s failed: %s", notification.pk, exc)
        return "failed"
    with transaction.atomic():
        Notification.objects.filter(pk=notification_id).update(
            status=Notification.Status.SENT, sent_at=clock.now(), last_error="")
        _audit_outcome(notification, "notification.sent", "")
    return "sent"


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed try a message is tried again:
    10 s, 20 s, 40 s, 80 s."""
    return timedelta(seconds=RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))


def notifications_send_unsent(*, now: datetime | None = None,
                              grace: timedelta | None = None,
                              batch: int = OUTBOX_BATCH) -> list[int]:
    """Beat: send outbox rows that are due but whose queued send never came.

    A row is written with its decision and its send queued on commit; a process that
    died in between, a broker that was down or a retry that was lost leaves it pending.
    Rows due for longer than ``grace`` (the queued task's head start) are sent here,
    oldest first. Each send claims its row first (``notification_send``), so a task
    arriving late, or a second sweep, finds it claimed and sends nothing. Returns the
    ids of the rows this sweep sent.
    """
    now = now or clock.now()
    if grace is None:
        # The queued task's (or its retry's) head start before the sweep steps in.
        grace = timedelta(seconds=settings.PORTAL_OUTBOX_GRACE_SECONDS)
    due = list(Notification.objects.filter(
        status=Notification.Status.PENDING, attempts__lt=MAX_ATTEMPTS,
        next_attempt_at__lte=now - grace).order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:batch])
    sent = []
    for pk in due:
        try:
            outcome = notification_send(notification_id=pk)
        except Exception:
            logger.exception("the outbox sweep could not send notification %s", pk)
            continue
        if outcome == "sent":
            sent.append(pk)
    if due:
        logger.info("outbox sweep: %s due, %s sent", len(due), len(sent))
    return sent


def _audit_outcome(notification: Notification, action: str, error: str) -> None:
    audit_record(actor=System("notification sender"), action=action, obj=notification,
                 object_repr=f"{notification.get_kind_display()}: {notification.subject}"[:300],
                 environment=notification.environment,
                 after={"kind": notification.kind, "channel": notification.channel,
                        "recipient": redact_target(notification.recipient),
                        "change": notification.change_id,
                        "deployment": notification.deployment_id,
                        "attempts": notification.attempts},
                 reason=error)


# A send claimed longer ago than this was cut off by a dying worker.
INTERRUPTED_AFTER = timedelta(minutes=15)


def notifications_settle_interrupted(*, now: datetime | None = None) -> int:
    """Mark sends cut off mid-way as failed, saying why; they are not tried again.

    The message may or may not have left before the worker died. Sending it again
    could send it twice, so it is shown as failed with the reason instead of being
    left "sending" for ever.
    """
    cutoff = (now or clock.now()) - INTERRUPTED_AFTER
    settled = 0
    for pk in list(Notification.objects.filter(status=Notification.Status.SENDING,
                                               claimed_at__lt=cutoff)
                   .values_list("pk", flat=True)):
        with transaction.atomic():
            changed = Notification.objects.filter(
                pk=pk, status=Notification.Status.SENDING, claimed_at__lt=cutoff,
            ).update(status=Notification.Status.FAILED,
                     last_error="interrupted while sending; not retried, so that it is "
                                "never sent twice")
            if changed:
                notification = Notification.objects.get(pk=pk)
                audit_record(actor=System("interrupted notification detector"),
                             action="notification.interrupted", obj=notification,
                             environment=notification.environment,
                             after={"status": notification.status})
                settled += 1
    return settled
