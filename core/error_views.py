"""Error answers: the portal's own pages, JSON with a code under /api/, never a traceback.

Wired as Django's handler400/403/404/500 and CSRF_FAILURE_VIEW. The pages are rendered
without the request's context (no session, no user, no database), so they still render
while the database is down.
"""

from __future__ import annotations

import logging
import sys

from django.http import HttpResponse, JsonResponse
from django.template import loader

from core import transient

logger = logging.getLogger(__name__)

OUTAGE_DETAIL = {
    "database_unavailable": "The database is unavailable; try again in a minute.",
    "queue_unavailable": "The task queue (Redis) is unavailable; try again in a minute.",
}


def outage_code(exc: BaseException | None) -> str | None:
    """``database_unavailable`` or ``queue_unavailable`` when ``exc`` is an outage."""
    if exc is None:
        return None
    if transient.is_transient(exc):
        # A deadlock or serialization failure: the database is up and the transaction
        # may simply run again (core.transient), not an outage.
        return None
    import django.db
    import kombu.exceptions
    import psycopg
    import redis.exceptions

    if isinstance(exc, django.db.OperationalError | django.db.InterfaceError
                  | psycopg.OperationalError | psycopg.InterfaceError):
        return "database_unavailable"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                  | kombu.exceptions.OperationalError):
        return "queue_unavailable"
    return None


def is_api(request) -> bool:
    return request.path.startswith("/api/")


def _request_id(request) -> str:
    return (request.headers.get("X-Request-ID") or "")[:64]


def error_response(request, status: int, code: str, title: str, message: str):
    if is_api(request):
        response = JsonResponse({"code": code, "detail": message}, status=status)
    else:
        html = loader.render_to_string("errors/error.html", {
            "title": title, "message": message, "request_id": _request_id(request)})
        response = HttpResponse(html, status=status)
    if status == 503:
        response["Retry-After"] = "60"
    return response


def unavailable(request, code: str):
    return error_response(request, 503, code, "Temporarily unavailable", OUTAGE_DETAIL[code])


def bad_request(request, exception=None):
    return error_response(request, 400, "bad_request", "Bad request",
                          "The request could not be understood.")


def permission_denied(request, exception=None):
    return error_response(request, 403, "forbidden", "Not allowed",
                          "You do not have permission to see this page.")


def page_not_found(request, exception=None):
    message = ("There is no such API endpoint." if is_api(request)
               else "There is no such page, or it is not yours to see.")
    return error_response(request, 404, "not_found", "Page not found", message)


def conflict_response(request):
    """The answer to a request whose transaction died of a deadlock or a serialization
    failure: 409 ``concurrent_update``, marked so that ``RetryTransientMiddleware`` may
    run the request again instead of sending it."""
    response = error_response(request, 409, transient.CODE, "Try again", transient.DETAIL)
    response["Retry-After"] = "1"
    response.transient_failure = True
    return response


def server_error(request):
    if transient.is_transient(sys.exc_info()[1]):
        return conflict_response(request)
    code = outage_code(sys.exc_info()[1])
    if code:
        return unavailable(request, code)
    return error_response(request, 500, "server_error", "Something went wrong",
                          "The portal could not complete this request. It has been logged; "
                          "try again, and tell the portal team if it keeps happening.")


def csrf_failure(request, reason: str = ""):
    return error_response(request, 403, "csrf_failed", "Form expired",
                          "The form was out of date or came from another site. Go back, "
                          "reload the page and try again.")


def signin_locked_out(request, original_response=None, credentials=None):
    """The sign-in page's answer during a lockout (django-axes' AXES_LOCKOUT_CALLABLE)."""
    import math

    from axes.helpers import get_client_username
    from axes.models import AccessAttempt
    from django.conf import settings
    from django.shortcuts import render
    from django.utils import timezone

    cooloff = settings.AXES_COOLOFF_TIME
    last = (AccessAttempt.objects.filter(
        username=get_client_username(request, credentials),
        ip_address=getattr(request, "axes_ip_address", None))
        .order_by("-attempt_time").values_list("attempt_time", flat=True).first())
    remaining = cooloff if last is None else last + cooloff - timezone.now()
    minutes = max(1, math.ceil(remaining.total_seconds() / 60))
    return render(request, "registration/locked_out.html", {"cooloff_minutes": minutes},
                  status=429)
