"""Binds the request id, client IP and user agent to the context, for audit events."""

import uuid

from core.context import RequestContext, bind_request, unbind_request

# Probes answered for machines (health, readiness, the Prometheus scrape): no person
# is behind them, so the session checks (last seen, idle sign-out) leave them alone and
# they never load a session or a user.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        token = bind_request(
            RequestContext(
                request_id=request_id[:64],
                ip=request.META.get("REMOTE_ADDR") or None,
                user_agent=request.headers.get("User-Agent", "")[:300],
                request=request,
            )
        )
        try:
            response = self.get_response(request)
        finally:
            unbind_request(token)
        response["X-Request-ID"] = request_id[:64]
        return response


class RejectNulBytesMiddleware:
    """A NUL character in a query string or form field is a 400, never a 500.

    PostgreSQL refuses NUL in text, so such a value would otherwise fail deep in a
    query. Checked once here for every page and API request.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if self._has_nul(request):
            message = "The request contains a NUL character, which no field accepts."
            if request.path.startswith("/api/"):
                from django.http import JsonResponse

                return JsonResponse({"code": "invalid", "detail": message}, status=400)
            from django.http import HttpResponseBadRequest

            return HttpResponseBadRequest(message, content_type="text/plain")
        return self.get_response(request)

    @staticmethod
    def _has_nul(request) -> bool:
        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
            return True
        if any("\x00" in v for values in request.GET.lists() for v in values[1]):
            return True
        content_type = request.META.get("CONTENT_TYPE", "")
        if request.method == "POST" and content_type.startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            try:
                return any("\x00" in v for _, values in request.POST.lists() for v in values)
            except Exception:  # a malformed body is Django's to answer
                return False
        return False


class ServiceUnavailableMiddleware:
    """A database or Redis outage is a 503; under /api/ every other crash is a JSON 500.

    A transaction that died of a deadlock or a serialization failure is neither: it
    answers 409 ``concurrent_update`` (``core.transient``), which the retry middleware
    runs again when it may.

    Pages: a friendly 503 page when PostgreSQL or Redis is unreachable; other errors go
    on to Django's handler500 (``core.error_views``). API: a JSON body with a code
    (``database_unavailable``, ``queue_unavailable``, ``server_error``), even with
    DEBUG on, so an API client never receives an HTML debug page.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        import logging

        from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
        from django.http import Http404

        from core import error_views, transient

        logger = logging.getLogger("core.errors")
        if transient.is_transient(exception):
            # Not an outage: 409 concurrent_update, which RetryTransientMiddleware runs
            # again when it may (core/transient.py).
            logger.info("%s on %s %s", transient.CODE, request.method, request.path)
            return error_views.conflict_response(request)
        code = error_views.outage_code(exception)
        if code:
            logger.error("%s on %s %s: %s", code, request.method, request.path,
                         exception.__class__.__name__)
            return error_views.unavailable(request, code)
        if error_views.is_api(request) and not isinstance(
                exception, Http404 | PermissionDenied | BadRequest | SuspiciousOperation):
            logger.exception("error on %s %s", request.method, request.path)
            return error_views.server_error(request)
        return None
