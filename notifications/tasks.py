"""Celery tasks: ids in, a service call, nothing else (STYLE 8)."""

from celery import shared_task

from notifications import services

# Transient failures wait 10 s, 20 s, 40 s, 80 s before the next attempt.
RETRY_BASE_SECONDS = 10


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=services.MAX_ATTEMPTS)
def notification_send(self, notification_id: int) -> None:
    outcome = services.notification_send(notification_id=notification_id)
    if outcome == "retry":
        raise self.retry(countdown=RETRY_BASE_SECONDS * 2 ** self.request.retries)


@shared_task(ignore_result=True)
def notifications_settle_interrupted() -> None:
    services.notifications_settle_interrupted()
