"""API rate limits (429), counted in the shared Redis cache.

Kept apart from core.api because DRF imports these while it builds its own
view class, before anything that imports views can load.
"""

import logging

from rest_framework import throttling

logger = logging.getLogger(__name__)


class _FailOpen:
    """While Redis is away the budget cannot be counted: let the request through.

    A deploy request during a Redis outage must still be accepted (its row is
    committed and the task is sent once Redis is back); authentication and
    permissions are unaffected.
    """

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # noqa: BLE001 - redis-py's connection errors
            logger.warning("rate limit not counted: the cache cannot be reached (%s)",
                           exc.__class__.__name__)
            return True


class UserThrottle(_FailOpen, throttling.UserRateThrottle):
    """Per user: the tokens of one user share its budget."""

    scope = "user"


class AnonThrottle(_FailOpen, throttling.AnonRateThrottle):
    scope = "anon"
