"""Read queries for notifications, shared by pages and the change page fragment."""

from __future__ import annotations

from django.db.models import QuerySet

from notifications.models import Notification, Subscription


def notifications_for_change(change_id: int) -> QuerySet[Notification]:
    """Every message about a change and its deployments, oldest first (one query)."""
    return Notification.objects.filter(change_id=change_id).order_by("created_at", "id")


def subscriptions() -> QuerySet[Subscription]:
    return Subscription.objects.select_related("application", "environment", "user",
                                               "created_by").order_by("id")
