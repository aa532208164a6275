"""Notifications (SOP 4.1 phase 1, 11.2): who is told what, and sending it exactly once.

Every message the portal sends goes through here, as an outbox. Events reach these
services as domain events sent inside the transaction that decided them
(``receivers.py``): the approval workflow's (``approvals.signals``: submitted, approved,
rejected, deploying, start refused, approval reopened) and the engine's
``deployment_ending``. The messages of one event become ``Notification`` rows in that
transaction, so they exist if and only if the decision committed; their sending is
queued on commit (the Celery task ``notification_send``), and the beat task
``notifications_send_unsent`` sends the rows whose queued send never came. Sending
claims a row with a conditional update before the message leaves, so a row is sent at
most once however many tasks and sweeps reach it. A failing or slow delivery never
undoes or delays the decision.

- ``events``: the messages of each domain event, and who receives them;
- ``content``: what each message says (the SOP 11.2 notices);
- ``outbox``: writing an event's rows, sending each once, the sweeps;
- ``subscriptions``: subscribing, unsubscribing, and who may still hear;
- ``webhooks``: the bodies posted to Slack and JSON receivers, and the post.
"""

from notifications.services.content import (
    Message,
    approval_reopened_message,
    approval_request_message,
    base_url,
    deadline_message,
    deployment_message,
    expected_duration,
    pre_deployment_message,
    rejected_message,
    start_refused_message,
)
from notifications.services.events import (
    notifications_for_approval_reopened,
    notifications_for_approvals_lapsed,
    notifications_for_cab_agenda,
    notifications_for_change_deploying,
    notifications_for_change_start_refused,
    notifications_for_change_submitted,
    notifications_for_deadline_near,
    notifications_for_deployment,
    notifications_for_gate_approved,
    notifications_for_gate_rejected,
    notifications_for_gates_expired,
)
from notifications.services.outbox import (
    INTERRUPTED_AFTER,
    MAX_ATTEMPTS,
    OUTBOX_BATCH,
    RETRY_BASE_SECONDS,
    notification_send,
    notifications_queue,
    notifications_send_unsent,
    notifications_settle_interrupted,
    retry_delay,
)
from notifications.services.subscriptions import (
    subscription_create,
    subscription_delete,
    subscription_recipient,
    subscriptions_for,
)
from notifications.services.webhooks import (
    WEBHOOK_ANSWER_MAX_BYTES,
    WEBHOOK_TIMEOUT,
    TransientError,
    slack_body,
    webhook_body,
    webhook_post,
)

__all__ = [
    "INTERRUPTED_AFTER", "MAX_ATTEMPTS", "OUTBOX_BATCH", "RETRY_BASE_SECONDS",
    "WEBHOOK_ANSWER_MAX_BYTES", "WEBHOOK_TIMEOUT", "Message", "TransientError",
    "approval_reopened_message", "approval_request_message", "base_url",
    "deadline_message", "notifications_for_approvals_lapsed",
    "notifications_for_cab_agenda", "notifications_for_deadline_near",
    "notifications_for_gates_expired",
    "deployment_message", "expected_duration", "notification_send",
    "notifications_for_approval_reopened", "notifications_for_change_deploying",
    "notifications_for_change_start_refused", "notifications_for_change_submitted",
    "notifications_for_deployment", "notifications_for_gate_approved",
    "notifications_for_gate_rejected", "notifications_queue", "notifications_send_unsent",
    "notifications_settle_interrupted", "pre_deployment_message", "rejected_message",
    "retry_delay", "slack_body", "start_refused_message", "subscription_create",
    "subscription_delete", "subscription_recipient", "subscriptions_for", "webhook_body",
    "webhook_post",
]
