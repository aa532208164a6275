"""The CAB nav link: shown to administrators and whoever may decide a CAB gate."""

from django import template

from approvals.meeting_selectors import is_cab_member

register = template.Library()


@register.filter
def cab_member(user) -> bool:
    return is_cab_member(user)
