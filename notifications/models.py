"""Who hears about what (subscriptions), and every message the portal sent or will send."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Application, Environment
from core import clock


def redact_target(target: str) -> str:
    """A webhook URL works as a secret: show and record only its scheme, host and a hash."""
    if not target.startswith(("http://", "https://")):
        return target
    from hashlib import sha256
    from urllib.parse import urlsplit

    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.hostname}/… (#{sha256(target.encode()).hexdigest()[:10]})"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook (generic JSON)"
    SLACK = "slack", "Slack-compatible webhook"


class Kind(models.TextChoices):
    APPROVAL_REQUEST = "approval_request", "Approval request"
    REJECTED = "rejected", "Change rejected"
    PRE_DEPLOYMENT = "pre_deployment", "Pre-deployment notification (SOP 11.2)"
    POST_DEPLOYMENT = "post_deployment", "Post-deployment summary (SOP 11.2)"
    FAILED = "failed", "Deployment failed"
    ROLLED_BACK = "rolled_back", "Rollback"
    START_REFUSED = "start_refused", "Deployment not started (deployer may not deploy)"
    APPROVAL_REOPENED = "approval_reopened", "Approval reopened (the change moved)"
    DEADLINE = "deadline", "Approval deadline (warning, expiry, lapse)"


class Subscription(models.Model):
    """A team's (or person's) wish to hear about one application and environment.

    An empty application or environment means all of them; empty ``kinds`` means
    every kind. Email goes to ``target`` or, when blank, to the user's address.
    """

    application = models.ForeignKey(Application, null=True, blank=True,
                                    on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey(Environment, null=True, blank=True,
                                    on_delete=models.CASCADE, related_name="+")
    kinds = models.JSONField(default=list, blank=True)
    channel = models.CharField(max_length=10, choices=Channel.choices, default=Channel.EMAIL)
    target = models.CharField(max_length=500, blank=True,
                              help_text="Email address or webhook URL.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.CASCADE, related_name="+")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        scope = (f"{self.application.slug if self.application else 'all applications'} / "
                 f"{self.environment.slug if self.environment else 'all environments'}")
        return f"{self.get_channel_display()} {redact_target(self.target) or self.user} ({scope})"


class Notification(models.Model):
    """One message to one recipient on one channel: the outbox row and its delivery
    record, kept for the change page and audit.

    Written in the transaction of the decision it reports (``approvals.signals``,
    ``deployments.signals.deployment_ending``), so it exists if and only if the
    decision committed. ``event_key`` names what it is about (``change:12:submitted``);
    with channel and recipient it is unique, so an event handled twice never makes a
    second message. Sending claims the row (pending -> sending) with a conditional
    update before the message leaves, so a task delivered twice, or the task and the
    outbox sweep at once, send it once. ``next_attempt_at`` says when a pending row is
    due: the sweep (``notifications_send_unsent``) sends rows whose queued send never
    came (the process died after commit, the broker was down) or whose retry was lost.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    recipient = models.CharField(max_length=500)
    recipient_name = models.CharField(max_length=150, blank=True)
    subscription = models.ForeignKey(Subscription, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="notifications")
    event_key = models.CharField(max_length=100)
    change_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    deployment_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    environment = models.CharField(max_length=50, blank=True)
    subject = models.CharField(max_length=300)
    body = models.TextField()
    # The template's fields by name (SOP 11.2), for webhooks and for tests.
    fields = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=clock.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # When a pending row is due: at once when written, later after a transient failure.
    next_attempt_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["event_key", "channel", "recipient"],
                                    name="notification_once_per_event_and_recipient"),
        ]
        indexes = [
            # The outbox sweep: the few pending rows that are due, never the sent ones.
            models.Index(fields=["next_attempt_at", "id"],
                         condition=models.Q(status="pending"),
                         name="notification_outbox_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.shown_recipient} ({self.status})"

    @property
    def shown_recipient(self) -> str:
        return self.recipient_name or redact_target(self.recipient)
