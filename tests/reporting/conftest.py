"""A known data set of deployments whose DORA figures are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model

from catalog.models import Application, Environment, Release
from deployments.models import Deployment, DeploymentStep


def at(month: int, day: int, hour: int = 12, minute: int = 0, year: int = 2025) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


SINCE = at(1, 1, 0)
UNTIL = at(3, 1, 0)


def make_deployment(app, env, *, version, committed, finished, status="succeeded",
                    kind="deploy", failed_step=False, rolled_back=None):
    user = get_user_model().objects.get(username="engineer")
    release, _ = Release.objects.get_or_create(
        application=app, version=version,
        defaults={"committed_at": committed, "created_by": user, "created_at": committed})
    deployment = Deployment.objects.create(
        application=app, environment=env, release=release, kind=kind, status=status,
        started_at=finished.replace(minute=0) if finished.minute else finished,
        finished_at=finished, created_at=finished, rolled_back_deployment=rolled_back,
        progress=100 if status == "succeeded" else 60)
    DeploymentStep.objects.create(deployment=deployment, position=1, name="deploy",
                                  title="Deploy new version",
                                  status="failed" if failed_step else "succeeded")
    # As the engine does in the transaction that ends a deployment: the DORA figures'
    # daily roll-ups follow (reporting.rollups).
    from reporting import rollups

    rollups.deployment_ended(deployment=deployment)
    return deployment


@pytest.fixture
def known_history(demo):
    """Production history of storefront over January and February 2025 (see test names
    for the figures), one billing deployment, and staging noise that must not count."""
    storefront = Application.objects.get(slug="storefront")
    billing, _ = Application.objects.get_or_create(slug="billing", defaults={"name": "Billing"})
    prod = Environment.objects.get(slug="production")
    staging = Environment.objects.get(slug="staging")
    d = {}
    # January: 5 deployments, 3 completed, 2 failures (restored after 2 h and 1 h).
    d[1] = make_deployment(storefront, prod, version="1.0.0", committed=at(1, 5, 0),
                           finished=at(1, 5, 12))  # lead 12 h
    d[2] = make_deployment(storefront, prod, version="1.1.0", committed=at(1, 8, 12),
                           finished=at(1, 10, 12))  # lead 48 h
    d[3] = make_deployment(storefront, prod, version="1.2.0", committed=at(1, 14),
                           finished=at(1, 15, 10), status="failed", failed_step=True)
    d[4] = make_deployment(storefront, prod, version="1.2.1", committed=at(1, 15, 0),
                           finished=at(1, 15, 12))  # lead 12 h; restores d3 after 2 h
    d[5] = make_deployment(storefront, prod, version="1.3.0", committed=at(1, 19),
                           finished=at(1, 20, 10), status="rolled_back", failed_step=True)
    d["r1"] = make_deployment(storefront, prod, version="1.2.1", committed=at(1, 15, 0),
                              finished=at(1, 20, 11), kind="rollback", rolled_back=d[5])
    d[6] = make_deployment(storefront, prod, version="1.3.1", committed=at(1, 24),
                           finished=at(1, 25), status="cancelled")
    # February: 3 deployments, 2 completed, 2 failures (restored after 6 h and 72 h).
    d[7] = make_deployment(storefront, prod, version="1.4.0", committed=at(2, 1, 12),
                           finished=at(2, 3, 12))  # lead 48 h
    d[8] = make_deployment(storefront, prod, version="1.5.0", committed=at(2, 9, 12),
                           finished=at(2, 10, 12), status="rolled_back")  # lead 24 h
    d["r2"] = make_deployment(storefront, prod, version="1.4.0", committed=at(2, 1, 12),
                              finished=at(2, 10, 18), kind="rollback", rolled_back=d[8])
    d[9] = make_deployment(storefront, prod, version="1.6.0", committed=at(2, 26),
                           finished=at(2, 27, 12), status="failed", failed_step=True)
    d[10] = make_deployment(storefront, prod, version="1.6.1", committed=at(3, 2, 0),
                            finished=at(3, 2, 12))  # after the range: restores d9 after 72 h
    # Billing in production, once, in January (lead 3 h).
    d["b1"] = make_deployment(billing, prod, version="0.1.0", committed=at(1, 7, 9),
                              finished=at(1, 7, 12))
    # Staging: never counted in production figures.
    for day in range(1, 20):
        make_deployment(storefront, staging, version=f"9.{day}.0", committed=at(1, day, 0),
                        finished=at(1, day, 1), status="failed", failed_step=True)
    return d
