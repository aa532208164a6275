"""Factories for the domain, on top of the demo data the ``demo`` fixture loads."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from approvals import services as approval_services
from deployments.models import Application, Environment, Release


class ReleaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Release

    application = factory.LazyFunction(lambda: Application.objects.get(slug="storefront"))
    version = factory.Sequence(lambda n: f"2.{n}.0")
    notes = "Release notes."
    # CI reported green by default; tests about red checks say so.
    checks = factory.LazyFunction(lambda: {"tests": {"status": "passed"},
                                           "security_scan": {"status": "passed",
                                                             "critical": 0}})
    created_by = factory.LazyFunction(
        lambda: get_user_model().objects.get(username="engineer"))


def request_change(requester, environment: str = "staging", release=None, **kwargs):
    """A change submitted through the service, as a person or CI would."""
    return approval_services.change_request_create(
        actor=requester,
        release=release or ReleaseFactory(),
        environment=Environment.objects.get(slug=environment),
        **kwargs,
    )
