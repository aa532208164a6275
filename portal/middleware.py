"""Binds the request id, client IP and user agent to the context, for audit events."""

import uuid

from portal.context import RequestContext, bind_request, unbind_request


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
            )
        )
        try:
            response = self.get_response(request)
        finally:
            unbind_request(token)
        response["X-Request-ID"] = request_id[:64]
        return response
