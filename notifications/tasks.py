"""Celery tasks: ids in, a service call, nothing else (STYLE 8)."""

from celery import shared_task

from notifications import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=services.MAX_ATTEMPTS)
def notification_send(self, notification_id: int) -> None:
    outcome = services.notification_send(notification_id=notification_id)
    if outcome == "retry":
        # Transient failures wait 10 s, 20 s, 40 s, 80 s; should this retry be lost,
        # the outbox sweep sends the row once it is due.
        raise self.retry(countdown=services.retry_delay(self.request.retries + 1)
                         .total_seconds())


@shared_task(ignore_result=True)
def notifications_send_unsent() -> None:
    services.notifications_send_unsent()


@shared_task(ignore_result=True)
def notifications_settle_interrupted() -> None:
    services.notifications_settle_interrupted()
