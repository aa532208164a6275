"""Fixtures for the REST API tests: tokens with chosen scopes."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.trail import System
from identity.services import api_token_issue
from tests.conftest import stepped_up

_counter = {"n": 0}


@pytest.fixture
def scoped():
    """scoped(user, "read", "request") -> an API client whose token has only those scopes."""

    def make(user, *scopes) -> APIClient:
        _counter["n"] += 1
        token, raw = api_token_issue(actor=System("test"), user=user,
                                     name=f"scoped-{_counter['n']}", scopes=list(scopes))
        stepped_up(token)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make
