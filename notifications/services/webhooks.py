"""Webhooks: the bodies posted to Slack and to JSON receivers, and the post itself,
through the one guarded door to the outside (``core.outbound``)."""

from __future__ import annotations

import json

from core import outbound
from notifications.models import Notification

WEBHOOK_TIMEOUT = 10
WEBHOOK_ANSWER_MAX_BYTES = 64 * 1024


class TransientError(Exception):
    """The receiver could not be reached or answered 5xx: worth trying again."""


def slack_body(notification: Notification) -> dict:
    return {
        "text": notification.subject,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": notification.subject[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": notification.body[:2900]}},
        ],
    }


def webhook_body(notification: Notification) -> dict:
    """The JSON a webhook subscription receives (the OpenAPI document's ``notification``
    webhook)."""
    return {"kind": notification.kind, "subject": notification.subject,
            "text": notification.body, "change": notification.change_id,
            "deployment": notification.deployment_id,
            "environment": notification.environment, "fields": notification.fields,
            "notification": notification.pk}


def webhook_post(url: str, body: dict, notification: Notification) -> None:
    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json", "User-Agent": "change-portal",
        # Receivers can drop a repeat of the same message by this key.
        "Idempotency-Key": f"notification-{notification.pk}"}
    try:
        answer = outbound.request("POST", url, body=data, headers=headers,
                                  connect_timeout=WEBHOOK_TIMEOUT, read_timeout=WEBHOOK_TIMEOUT,
                                  max_bytes=WEBHOOK_ANSWER_MAX_BYTES)
    except outbound.DestinationRefused as exc:
        raise ValueError(f"destination refused: {exc}") from None
    except outbound.ResponseTooLarge as exc:
        raise ValueError(str(exc)) from None
    except outbound.Unreachable as exc:
        raise TransientError(str(exc)) from None
    if answer.status >= 500 or answer.status == 429:
        raise TransientError(f"HTTP {answer.status}")
    if answer.status >= 400:
        raise ValueError(f"HTTP {answer.status}: the receiver refused the message")
