from django.contrib import admin

from core.admin import ReadOnlyModelAdmin
from notifications.models import Notification, Subscription, redact_target


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyModelAdmin):
    """Subscriptions are made on the Notifications page, where the service checks the
    subscriber's permissions and the webhook's address and audits them. A webhook URL
    works as a secret: the admin shows only its scheme, host and a hash."""

    list_display = ["id", "channel", "shown_target", "user", "application", "environment",
                    "kinds", "active"]
    list_filter = ["channel", "active", "environment"]
    exclude = ["target"]

    @admin.display(description="target")
    def shown_target(self, subscription: Subscription) -> str:
        return redact_target(subscription.target)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "kind", "channel", "shown_recipient", "status", "attempts",
                    "change_id", "deployment_id"]
    list_filter = ["kind", "channel", "status"]
    exclude = ["recipient"]
