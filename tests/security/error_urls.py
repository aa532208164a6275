"""The portal's URLs plus a page and an API endpoint that crash, for the error tests."""

from django.urls import path
from rest_framework.response import Response

from core.api import ApiView
from portal.urls import handler400, handler403, handler404, handler500  # noqa: F401
from portal.urls import urlpatterns as portal_urlpatterns

SECRET_IN_ERROR = "password=hunter2-in-a-crash"


def crashing_page(request):
    raise RuntimeError(SECRET_IN_ERROR)


class CrashingApi(ApiView):
    def get(self, request):
        raise RuntimeError(SECRET_IN_ERROR)
        return Response({})  # pragma: no cover


class CacheReadingApi(ApiView):
    """An endpoint that cannot answer without Redis (reads the shared cache)."""

    def get(self, request):
        from django.core.cache import cache

        return Response({"value": cache.get("probe")})


urlpatterns = [
    path("api/v1/cache-probe/", CacheReadingApi.as_view()),
    path("crash/", crashing_page),
    path("api/v1/crash/", CrashingApi.as_view()),
    *portal_urlpatterns,
]
