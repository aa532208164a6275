from django import template

from notifications.selectors import notifications_for_change

register = template.Library()


@register.inclusion_tag("notifications/_for_change.html")
def change_notifications(change):
    """``{% load notifications %}{% change_notifications change %}`` on the change page."""
    return {"notifications": list(notifications_for_change(change.pk)), "change": change}
