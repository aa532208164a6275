from django.contrib import admin

from notifications.models import Notification, Subscription


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["id", "channel", "target", "user", "application", "environment", "kinds",
                    "active"]
    list_filter = ["channel", "active", "environment"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "channel", "recipient", "status", "attempts",
                    "change_id", "deployment_id"]
    list_filter = ["kind", "channel", "status"]
    readonly_fields = [f.name for f in Notification._meta.fields]

    def has_add_permission(self, request):
        return False
