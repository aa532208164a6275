"""Fixtures for the REST API tests: tokens with chosen scopes, signed hook requests."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from audit.trail import System
from identity.services import api_token_issue
from integrations.hooks import sign
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


@pytest.fixture
def signed_post(settings):
    """signed_post(hook, body, secret=...) posts a body signed with the hook's secret."""

    def post(hook: str, body: dict, *, secret: str = "s3cret-for-tests", sign_with=None):
        setattr(settings, f"PORTAL_HOOK_SECRET_{hook.upper()}", secret)
        raw = json.dumps(body).encode()
        client = APIClient()
        return client.post(f"/api/v1/hooks/{hook}", data=raw, content_type="application/json",
                           HTTP_X_PORTAL_SIGNATURE=sign(sign_with or secret, raw))

    return post
