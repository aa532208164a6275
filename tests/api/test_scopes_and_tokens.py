"""Token scopes on every endpoint, expiry and revocation, the tokens page, issue_token."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import URLPattern
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from audit.trail import System
from core.api import ApiMixin
from identity.models import ApiToken
from identity.services import api_token_issue
from portal.urls import api_v1
from tests.api.helpers import finished_deployment
from tests.conftest import sign_in_with_second_factor
from tests.factories import ReleaseFactory, request_change

ALL = {"read", "request", "approve", "deploy"}


def test_every_api_endpoint_enforces_token_scopes():
    views = [p.callback.cls for p in api_v1 if isinstance(p, URLPattern)
             and hasattr(p.callback, "cls")]
    assert len(views) >= 20
    for view in views:
        assert issubclass(view, ApiMixin), view
        if hasattr(view, "post"):
            assert view.write_scopes and view.write_scopes <= ALL, view


def _targets(demo):
    change = request_change(demo.engineer, "staging")
    deployment = finished_deployment("staging")
    release = ReleaseFactory()
    return {
        "change": change.pk, "deployment": deployment.pk, "release": release.pk,
        "item": change.checklist.first().pk if change.checklist.exists() else 1,
    }


# (method, path, scopes needed, body)
ENDPOINTS = [
    ("get", "/api/v1/environments/", {"read"}, None),
    ("get", "/api/v1/applications/", {"read"}, None),
    ("get", "/api/v1/releases/", {"read"}, None),
    ("get", "/api/v1/releases/{release}/", {"read"}, None),
    ("post", "/api/v1/releases/", {"request"}, {"application": "storefront", "version": "9.9.9"}),
    ("get", "/api/v1/changes/", {"read"}, None),
    ("get", "/api/v1/changes/{change}/", {"read"}, None),
    ("post", "/api/v1/changes/", {"request"}, {"release": "{release}", "environment": "staging"}),
    ("post", "/api/v1/changes/{change}/approve", {"approve"}, {"gate": "qa"}),
    ("post", "/api/v1/changes/{change}/reject", {"approve"}, {"gate": "qa", "comment": "no"}),
    ("post", "/api/v1/changes/{change}/checklist/{item}", {"request"}, {"done": True}),
    ("post", "/api/v1/changes/{change}/deploy", {"deploy"}, {}),
    ("post", "/api/v1/changes/{change}/cancel", {"deploy"}, {}),
    ("post", "/api/v1/changes/{change}/submit", {"request"}, {}),
    ("get", "/api/v1/preflight/?release={release}&environment=staging", {"read"}, None),
    ("get", "/api/v1/deployments/", {"read"}, None),
    ("get", "/api/v1/deployments/{deployment}/", {"read"}, None),
    ("get", "/api/v1/deployments/{deployment}/log", {"read"}, None),
    ("post", "/api/v1/deployments/{deployment}/rollback", {"deploy"}, {"reason": "bad"}),
    ("post", "/api/v1/deployments/{deployment}/cancel", {"deploy"}, {}),
    ("get", "/api/v1/audit-events/", {"read"}, None),
    ("get", "/api/v1/metrics/dora/", {"read"}, None),
    ("post", "/api/v1/hooks/ci", {"request"}, {"release": "{release}", "check": "tests",
                                               "status": "passed"}),
    ("post", "/api/v1/hooks/push", {"request", "deploy"}, {"application": "storefront",
                                                           "version": "9.9.8"}),
    ("post", "/api/v1/hooks/alertmanager", {"deploy"}, {"alerts": []}),
]


def _fill(value, ids):
    if isinstance(value, str):
        filled = value.format(**ids)
        return int(filled) if filled.isdigit() and value.startswith("{") else filled
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("method,path,needed,body", ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_a_token_without_the_scope_is_refused_and_with_it_is_let_through(
        demo, scoped, method, path, needed, body):
    ids = _targets(demo)
    url, data = _fill(path, ids), _fill(body, ids)
    # The administrator may do anything, so only the token's scopes stand in the way.
    lacking = scoped(demo.admin, *sorted(ALL - needed) or ["read"])
    if needed == {"read"}:
        lacking = scoped(demo.admin, "request", "approve", "deploy")
    refused = getattr(lacking, method)(url, data, format="json")
    assert refused.status_code == 403, refused.content
    assert refused.json()["code"] == "insufficient_scope"
    allowed = getattr(scoped(demo.admin, *needed), method)(url, data, format="json")
    assert allowed.status_code < 500
    assert allowed.status_code not in (401, 403) or \
        allowed.json()["code"] != "insufficient_scope", allowed.content


def test_scopes_never_grant_what_the_user_may_not_do(demo, scoped):
    change = request_change(demo.engineer, "staging")
    outsider = scoped(demo.outsider, *ALL)
    assert outsider.get(f"/api/v1/changes/{change.pk}/").status_code == 404
    qa = scoped(demo.qa, *ALL)
    refused = qa.post(f"/api/v1/changes/{change.pk}/approve", {"gate": "tech_lead"},
                      format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "not_eligible"


def test_expired_and_revoked_tokens_get_401(demo):
    token, raw = api_token_issue(actor=System("test"), user=demo.engineer, name="soon",
                                 expires_at=timezone.now() + timedelta(minutes=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/environments/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = client.get("/api/v1/environments/")
    assert expired.status_code == 401
    assert expired.json() == {"code": "authentication_failed",
                              "detail": "The token is not valid, expired or revoked."}


def test_issuing_rejects_unknown_scopes_and_past_expiry(demo):
    from core.errors import Invalid

    with pytest.raises(Invalid):
        api_token_issue(actor=System("test"), user=demo.engineer, name="x", scopes=["admin"])
    with pytest.raises(Invalid):
        api_token_issue(actor=System("test"), user=demo.engineer, name="x", scopes=[])
    with pytest.raises(Invalid):
        api_token_issue(actor=System("test"), user=demo.engineer, name="x",
                        expires_at=timezone.now() - timedelta(days=1))


def test_tokens_page_issues_a_token_once_lists_it_and_revokes_it(demo, client):
    client.force_login(demo.engineer)
    page = client.post("/tokens/", {"name": "pipeline", "scopes": ["read", "request"],
                                    "days": "30"})
    assert page.status_code == 200
    raw = page.context["issued"]["raw"]
    assert raw in page.content.decode()
    token = ApiToken.objects.get(user=demo.engineer, name="pipeline")
    assert token.scopes == ["read", "request"]
    assert (token.expires_at - timezone.now()).days in (29, 30)

    listing = client.get("/tokens/").content.decode()
    assert "pipeline" in listing and raw not in listing and token.prefix in listing

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/environments/").status_code == 200
    deploy = api.post("/api/v1/changes/1/deploy")
    assert deploy.status_code == 403 and deploy.json()["code"] == "insufficient_scope"

    assert client.post(f"/tokens/{token.pk}/revoke").status_code == 302
    assert api.get("/api/v1/environments/").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoked", object_id=str(token.pk)).exists()


def test_tokens_page_shows_only_your_own_tokens_and_refuses_revoking_others(demo, client):
    theirs, _ = api_token_issue(actor=System("test"), user=demo.qa, name="qa-secret-ci")
    client.force_login(demo.engineer)
    assert "qa-secret-ci" not in client.get("/tokens/").content.decode()
    assert client.post(f"/tokens/{theirs.pk}/revoke").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_tokens_page_form_errors_are_shown(demo, client):
    client.force_login(demo.engineer)
    page = client.post("/tokens/", {"name": "", "days": "30"})
    assert page.status_code == 400
    assert not ApiToken.objects.filter(user=demo.engineer).exists()


def test_administrators_issue_tokens_for_service_accounts(demo, client):
    # Administrators hold a second factor; creating a token asks for it (docs/identity.md).
    sign_in_with_second_factor(client, demo.admin)
    ci_bot = get_user_model().objects.get(username="ci-bot")
    form = client.get("/tokens/").content.decode()
    assert f'value="{ci_bot.pk}"' in form and f'value="{demo.oncall.pk}"' not in form
    page = client.post("/tokens/", {"name": "ci", "scopes": ["read"], "days": "7",
                                    "user": ci_bot.pk})
    assert page.status_code == 200
    token = ApiToken.objects.get(name="ci")
    assert token.user == ci_bot and token.second_factor == ""


def test_issue_token_command_prints_a_token_with_the_given_scopes(demo):
    out = StringIO()
    call_command("issue_token", "engineer", "--name", "ci", "--scopes", "read,request",
                 stdout=out)
    raw = out.getvalue().strip()
    token = ApiToken.objects.get(name="ci")
    assert token.scopes == ["read", "request"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/environments/").status_code == 200
    with pytest.raises(CommandError):
        call_command("issue_token", "engineer", "--name", "ci2", "--scopes", "root")
