"""Request latency for Prometheus: one histogram, labelled by route name, not by path.

``RequestLatencyMiddleware`` runs first (outermost), so the time covers every other
middleware and the view. Labels stay few whatever the traffic: ``view`` is the URL
pattern's name (``change-detail``, ``api-change``; the view's dotted path when the
pattern has none, ``static`` for static files, ``unresolved`` when no pattern
matched), ``method`` one of the HTTP methods (``other`` for anything else) and
``status`` the class of the answer (``2xx`` .. ``5xx``).

Under gunicorn each worker process writes its observations to files in
``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` sets it) and a scrape of any worker
adds them up (``reporting.prometheus``).
"""

from __future__ import annotations

import time

from django.conf import settings
from prometheus_client import Histogram, disable_created_metrics

# No `*_created` series beside each histogram: Prometheus needs none.
disable_created_metrics()

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUEST_LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by route name, method and status class.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def route_label(request) -> str:
    """The name of the route that answered: a bounded set, never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or "unnamed"
    static = "/" + settings.STATIC_URL.lstrip("/")
    if request.path.startswith(static):
        return "static"
    return "unresolved"


class RequestLatencyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in METHODS else "other"
        REQUEST_LATENCY.labels(route_label(request), method,
                               f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started)
        return response
