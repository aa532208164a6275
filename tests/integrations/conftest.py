"""Fixtures for the incoming hooks' tests: requests signed with a hook's secret."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from integrations.hooks import sign


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
