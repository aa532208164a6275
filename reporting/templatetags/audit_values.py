"""Filters for showing audit events' recorded values."""

from django import template

register = template.Library()


@register.filter
def pairs(value) -> list:
    """The (key, value) pairs of a recorded dict, whatever its keys: an event whose data
    has a key named like a dict method ("items", "keys") still lists as data. Anything
    else gives no pairs, and the template shows it as it is."""
    return list(value.items()) if isinstance(value, dict) else []
