"""Factories for the domain, on top of the demo data the ``demo`` fixture loads."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from approvals import services as approval_services
from catalog.models import Application, Environment, Release, Target


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


def executor_app(executor: str, settings: dict, targets: int = 1):
    """An application on ``executor`` with its targets in staging."""
    app = Application.objects.create(slug=f"svc-{executor}", name=executor, executor=executor,
                                     executor_settings=settings)
    env = Environment.objects.get(slug="staging")
    for i in range(1, targets + 1):
        Target.objects.create(application=app, environment=env, name=f"node-{i}")
    return app, env


def run_deployment(demo, app, env, version="1.0.0", **release_fields):
    """Create and run a deployment in this process, as a worker would; return it finished."""
    from django.db import transaction

    from deployments import services

    release = Release.objects.create(application=app, version=version,
                                     created_by=demo.engineer, **release_fields)
    with transaction.atomic():
        deployment = services.deployment_create(actor=demo.oncall, release=release,
                                                environment=env)
    services.deployment_run(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    return deployment
