"""The OpenAPI description of the notifications the portal sends (OpenAPI 3.1
``webhooks``; ``SPECTACULAR_SETTINGS`` names them)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, OpenApiWebhook, extend_schema
from rest_framework import serializers


class NotificationWebhookSerializer(serializers.Serializer):
    """What the portal POSTs to a subscription's generic JSON webhook
    (notifications.services._json_body)."""

    kind = serializers.ChoiceField(
        choices=["approval_request", "rejected", "pre_deployment", "post_deployment",
                 "failed", "rolled_back", "start_refused", "approval_reopened", "deadline"],
        help_text="What happened (the subscription's kinds filter these).")
    subject = serializers.CharField(help_text="One line, e.g. `CR-12 approved`.")
    text = serializers.CharField(help_text="The message in plain text.")
    change = serializers.IntegerField(allow_null=True, help_text="The change request's id.")
    deployment = serializers.IntegerField(allow_null=True, help_text="The deployment's id.")
    environment = serializers.CharField(allow_blank=True, help_text="Environment slug.")
    fields = serializers.DictField(help_text="Facts of the event by name (application, "
                                             "version, status, ...).")
    notification = serializers.IntegerField(
        help_text="The notification's id; the same message sent again carries the same id "
                  "(and Idempotency-Key).")


NOTIFICATION_WEBHOOK = OpenApiWebhook(
    name="notification",
    decorator=extend_schema(
        summary="A notification, POSTed to a subscription's generic JSON webhook",
        description="Sent once per notification, retried while the receiver answers 5xx "
                    "or 429 or cannot be reached; an answer below 400 ends the delivery, "
                    "another 4xx stops it. The body is not signed: give the subscription a "
                    "URL holding a secret of the receiver's (a path or query token) and "
                    "serve it over HTTPS. "
                    "Slack-compatible webhooks receive Slack's `{text, blocks}` instead.",
        request=NotificationWebhookSerializer,
        responses={200: OpenApiResponse(description="Received (any 2xx).")},
    ),
)


NOTIFICATION_WEBHOOK_HEADERS = [
    {"in": "header", "name": "Idempotency-Key", "required": True, "schema": {"type": "string"},
     "description": "`notification-<id>`: the same for every attempt of one message, so a "
                    "receiver can drop repeats."},
    {"in": "header", "name": "User-Agent", "required": True,
     "schema": {"type": "string", "enum": ["change-portal"]}},
]


def webhook_headers(result, generator, request, public):
    """Postprocessing hook: the headers the portal sends with a notification webhook
    (drf-spectacular's webhooks take no header parameters)."""
    post = result.get("webhooks", {}).get(NOTIFICATION_WEBHOOK.name, {}).get("post")
    if post is not None:
        post["parameters"] = NOTIFICATION_WEBHOOK_HEADERS
    return result
