"""Small builders shared by the API tests."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from catalog.models import Application, Environment
from deployments.models import Deployment
from tests.factories import ReleaseFactory


def finished_deployment(environment: str = "staging", *, status: str = "succeeded",
                        minutes_ago: int = 60, release=None, started_by=None) -> Deployment:
    """A deployment that already ran, as the engine would have left it."""
    end = timezone.now() - timedelta(minutes=minutes_ago)
    release = release or ReleaseFactory()
    return Deployment.objects.create(
        application=Application.objects.get(slug="storefront"),
        environment=Environment.objects.get(slug=environment), release=release,
        status=status, progress=100 if status == "succeeded" else 40,
        started_by=started_by or release.created_by, created_at=end - timedelta(minutes=5),
        started_at=end - timedelta(minutes=5), finished_at=end)
