"""API rate limits (429), counted in the shared Redis cache.

Kept apart from portal.api because DRF imports these while it builds its own
view class, before anything that imports views can load.
"""

from rest_framework import throttling


class UserThrottle(throttling.UserRateThrottle):
    """Per user: the tokens of one user share its budget."""

    scope = "user"


class AnonThrottle(throttling.AnonRateThrottle):
    scope = "anon"
