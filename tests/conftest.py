"""Fixtures shared by the whole suite: real PostgreSQL and Redis, the demo cast."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from portal import embedded

PASSWORD = "test-pass-123"


@pytest.fixture(scope="session")
def embedded_services():
    """The embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL point elsewhere)."""
    services = embedded.Services()
    services.start(reuse=True)
    yield services
    services.stop()


@pytest.fixture(scope="session")
def django_db_setup(embedded_services, django_db_setup):
    """pytest-django's test database, created on the embedded server."""
    yield


@pytest.fixture
def demo(db):
    """Environments, policies, groups and one user per role (DESIGN.md section 9)."""
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    return Cast()


class Cast:
    """The fixed cast: a requester, an approver per gate, on-call, auditor, an outsider."""

    def __getattr__(self, username: str):
        User = get_user_model()
        if username == "outsider":
            user, _ = User.objects.get_or_create(username="outsider")
            return user
        return User.objects.get(username=username)


@pytest.fixture
def api():
    """An API client factory: api(user) authenticates with a freshly issued bearer token."""
    from portal.audit import System
    from portal.services import api_token_issue

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            _, raw = api_token_issue(actor=System("test"), user=user,
                                     name=f"t{user.pk}-{get_user_model().objects.count()}"
                                     f"-{id(client)}")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


def pytest_configure(config):
    from django.conf import settings

    # Hashing ten demo passwords with the production hasher costs two seconds a test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
