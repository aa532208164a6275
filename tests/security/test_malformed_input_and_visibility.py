"""Malformed input answers 400 with a stable code on every road, and releases are seen
only by those who work where they run (docs/security.md, section 18).

Each test sends what an attacker would: JSON nested far deeper than any request needs
(which used to exhaust the decoder's recursion, a 500), percent-encoded NUL and control
characters in an artifact URL (which used to reach ``os.path`` and PostgreSQL), and
reads of releases by people who hold nothing where those releases run."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern

from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog.models import Application, Environment, Release
from configuration.models import ConfigurationVersion
from core.idempotency import IdempotencyKey
from core.jsonbody import MAX_JSON_DEPTH
from deployments.models import Deployment
from portal.urls import api_v1
from tests.factories import ReleaseFactory, request_change

SHA = "a" * 64


def _api_post_routes() -> list[str]:
    """Every API v1 route that takes a POST, its path parameters filled with 1."""
    routes = []
    for pattern in api_v1:
        view = getattr(pattern.callback, "view_class", None)
        if not isinstance(pattern, URLPattern) or view is None or not hasattr(view, "post"):
            continue
        routes.append("/api/v1/" + re.sub(r"<int:\w+>", "1", str(pattern.pattern)))
    return routes


API_POST_ROUTES = _api_post_routes()


def test_the_route_list_is_the_whole_api():
    # The parametrised tests below cover what the URL conf holds: if this list shrank
    # to nothing (a refactor of the URL conf), they would pass without testing.
    assert {"/api/v1/releases/", "/api/v1/changes/", "/api/v1/changes/1/approve",
            "/api/v1/deployments/1/rollback", "/api/v1/hooks/ci", "/api/v1/hooks/push",
            "/api/v1/hooks/alertmanager"} <= set(API_POST_ROUTES)


def _deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _state() -> dict:
    return {model.__name__: model.objects.count()
            for model in (Release, ChangeRequest, Approval, Deployment, IdempotencyKey)}


DEEP_BODIES = {
    "array-500": _deep_array(500),
    "object-500": _deep_object(500),
    "in-a-field-500": '{"release": 1, "environment": "staging", "reason": '
                      + _deep_array(500) + "}",
    "array-100000": _deep_array(100_000),
    "one-past-the-limit": _deep_array(MAX_JSON_DEPTH + 1),
}


@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
@pytest.mark.parametrize("path", API_POST_ROUTES)
def test_deeply_nested_json_is_a_400_on_every_api_post_route(demo, api, path, body):
    request_change(demo.engineer, "staging")
    client = api(demo.engineer)
    before = _state()
    audit_before = AuditEvent.objects.count()
    response = client.post(path, data=body, content_type="application/json",
                                       HTTP_IDEMPOTENCY_KEY="deep-1")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] == "malformed"
    assert str(MAX_JSON_DEPTH) in response.json()["detail"]
    # Refused before anything ran: no change, no approval, no claimed idempotency key.
    assert _state() == before
    assert AuditEvent.objects.count() == audit_before


@pytest.mark.parametrize("path", API_POST_ROUTES)
def test_an_outsider_gets_the_same_400_and_nothing_else(demo, api, path):
    response = api(demo.outsider).post(path, data=_deep_array(500),
                                       content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "malformed"


@pytest.mark.parametrize("hook", ["ci", "push", "alertmanager"])
def test_a_signed_hook_with_a_deep_body_is_a_400(demo, settings, hook):
    from rest_framework.test import APIClient

    from integrations.hooks import sign

    setattr(settings, f"PORTAL_HOOK_SECRET_{hook.upper()}", "s3cret-for-tests")
    raw = _deep_object(2000).encode()
    before = _state()
    response = APIClient().post(f"/api/v1/hooks/{hook}", data=raw,
                                content_type="application/json",
                                HTTP_X_PORTAL_SIGNATURE=sign("s3cret-for-tests", raw))
    assert response.status_code == 400
    assert response.json()["code"] == "malformed"
    assert _state() == before


def test_nesting_within_the_limit_is_read_and_judged_on_its_fields(demo, api):
    # The limit is far above what requests use: a body nested to it is parsed and its
    # fields are refused as fields, not as malformed JSON.
    body = {"application": "storefront", "version": "9.9.9",
            "notes": json.loads(_deep_array(MAX_JSON_DEPTH - 1))}
    response = api(demo.engineer).post("/api/v1/releases/", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "notes" in response.json()["fields"]


def test_nul_in_a_json_string_is_a_400(demo, api):
    response = api(demo.engineer).post(
        "/api/v1/releases/", {"application": "storefront", "version": "9.9.9",
                              "notes": "a\x00b"}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "malformed"
    assert not Release.objects.filter(version="9.9.9").exists()


BAD_ARTIFACT_URLS = [
    "file:///srv/artifacts/storefront%00.tgz",
    "file:///srv/artifacts/%00/../storefront.tgz",
    "https://artifacts.example.com/storefront%00.tgz",
    "https://artifacts.example.com/store%0afront.tgz",
    "file:///srv/artifacts/store%0D%0Afront.tgz",
]


@pytest.mark.parametrize("url", BAD_ARTIFACT_URLS)
def test_an_encoded_control_character_in_an_artifact_url_is_a_400_and_audited(
        demo, api, url):
    response = api(demo.engineer).post("/api/v1/releases/", {
        "application": "storefront", "version": "9.9.9", "artifact_url": url,
        "artifact_sha256": SHA}, format="json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] == "artifact_untrusted"
    assert "artifact_url" in response.json()["fields"]
    assert not Release.objects.filter(version="9.9.9").exists()
    refusal = AuditEvent.objects.filter(action="release.refused").latest("id")
    assert refusal.after["code"] == "artifact_untrusted"
    assert "\x00" not in json.dumps(refusal.after)


@pytest.mark.parametrize("url", BAD_ARTIFACT_URLS[:3])
def test_the_release_page_answers_a_form_error(demo, client, url):
    client.force_login(demo.engineer)
    response = client.post("/releases/new/", {
        "application": "storefront", "version": "9.9.9", "artifact_url": url,
        "artifact_sha256": SHA})
    assert response.status_code == 400
    assert b"control characters" in response.content
    assert not Release.objects.filter(version="9.9.9").exists()


@pytest.mark.parametrize("document", [
    "limits: " + _deep_array(500),
    "limits: " + _deep_array(100_000),
    "limits:\n" + "".join("  " * i + "-\n" for i in range(1, 300)),
], ids=["flow-500", "flow-100000", "block-300"])
def test_a_deeply_nested_configuration_document_is_a_form_error(demo, client, document):
    client.force_login(demo.engineer)
    before = ConfigurationVersion.objects.count()
    response = client.post("/configuration/storefront/development/",
                           {"document": document, "reason": "deep"})
    assert response.status_code == 400
    assert b"nests mappings and lists more than" in response.content
    assert ConfigurationVersion.objects.count() == before


# --- 18. Release visibility -------------------------------------------------------------


@pytest.fixture
def elsewhere(demo):
    """An application with a target only in Production, and one of its releases,
    registered by a CI account of its own that holds nothing anywhere."""
    from catalog.models import Target

    app = Application.objects.create(slug="ledger", name="Ledger", team="finance")
    Target.objects.create(application=app, environment=Environment.objects.get(
        slug="production"), name="ledger-1")
    ledger_ci = get_user_model().objects.create(username="ledger-ci")
    return Release.objects.create(
        application=app, version="1.0.0", notes="Secret roadmap item",
        authors=["alice"], checks={"tests": {"status": "passed",
                                             "url": "https://ci.internal/run/7"}},
        created_by=ledger_ci)


def test_a_person_in_no_team_sees_no_release(demo, api, elsewhere):
    storefront = ReleaseFactory()
    client = api(demo.outsider)
    listed = client.get("/api/v1/releases/")
    assert listed.status_code == 200
    assert listed.json()["results"] == []
    for release in (storefront, elsewhere):
        response = client.get(f"/api/v1/releases/{release.pk}/")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert b"roadmap" not in response.content
    assert client.get(f"/api/v1/releases/?version={elsewhere.version}"
                      ).json()["results"] == []


def test_releases_follow_the_environments_a_person_works_in(demo, api, elsewhere):
    storefront = ReleaseFactory()
    # QA works in staging only: storefront runs there, the ledger only in Production.
    client = api(demo.qa)
    ids = {r["id"] for r in client.get("/api/v1/releases/?page_size=500").json()["results"]}
    assert storefront.pk in ids
    assert elsewhere.pk not in ids
    assert client.get(f"/api/v1/releases/{elsewhere.pk}/").status_code == 404
    assert client.get(f"/api/v1/releases/{storefront.pk}/").status_code == 200
    # Someone who holds a permission in Production sees the ledger's release.
    cab = api(demo.cab).get(f"/api/v1/releases/{elsewhere.pk}/")
    assert cab.status_code == 200
    assert cab.json()["notes"] == "Secret roadmap item"
    # So do auditors.
    assert api(demo.auditor).get(f"/api/v1/releases/{elsewhere.pk}/").status_code == 200


def test_the_account_that_registered_a_release_sees_it_and_no_other(demo, api, elsewhere):
    storefront = ReleaseFactory()
    client = api(elsewhere.created_by)
    assert client.get(f"/api/v1/releases/{elsewhere.pk}/").status_code == 200
    ids = {r["id"] for r in client.get("/api/v1/releases/").json()["results"]}
    assert ids == {elsewhere.pk}
    assert client.get(f"/api/v1/releases/{storefront.pk}/").status_code == 404


def test_ci_sees_the_release_it_registers(demo, api):
    registered = api(demo.ci).post("/api/v1/releases/", {
        "application": "storefront", "version": "7.7.7"}, format="json")
    assert registered.status_code == 201
    assert api(demo.ci).get(f"/api/v1/releases/{registered.json()['id']}/").status_code == 200


def test_a_release_deployed_where_a_person_works_is_seen(demo, api, elsewhere):
    from tests.api.helpers import finished_deployment

    assert api(demo.qa).get(f"/api/v1/releases/{elsewhere.pk}/").status_code == 404
    # A deployment of the ledger's release to staging (from a target since removed)
    # makes it visible to those who work in staging.
    deployment = finished_deployment("staging", release=elsewhere)
    Deployment.objects.filter(pk=deployment.pk).update(application=elsewhere.application)
    assert api(demo.qa).get(f"/api/v1/releases/{elsewhere.pk}/").status_code == 200


def test_an_invisible_release_is_unknown_to_preflight(demo, api, elsewhere):
    client = api(demo.qa)
    preflight = client.get(f"/api/v1/preflight/?release={elsewhere.pk}&environment=staging")
    assert preflight.status_code == 404
    assert preflight.json()["code"] == "not_found"
    by_version = client.get("/api/v1/preflight/?application=ledger&version=1.0.0"
                            "&environment=staging")
    assert by_version.status_code == 404
    assert b"roadmap" not in preflight.content + by_version.content


def test_the_change_form_offers_only_visible_releases(demo, client, elsewhere):
    storefront = ReleaseFactory()
    client.force_login(demo.qa)
    page = client.get(f"/changes/new/?release={elsewhere.pk}")
    assert page.status_code == 200
    assert f'value="{storefront.pk}"'.encode() in page.content
    assert f'value="{elsewhere.pk}"'.encode() not in page.content
    assert b"Ledger" not in page.content
    before = ChangeRequest.objects.count()
    refused = client.post("/changes/new/", {"release": elsewhere.pk, "environment": "staging",
                                            "change_type": "standard",
                                            "strategy": "all_at_once"})
    assert refused.status_code == 400
    assert b"Select a valid choice" in refused.content
    assert ChangeRequest.objects.count() == before


def test_the_release_list_costs_the_same_queries_however_long(demo, api):
    client = api(demo.engineer)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/releases/").status_code == 200
        return len(queries)

    ReleaseFactory.create_batch(2)
    few = count()
    ReleaseFactory.create_batch(30)
    assert count() == few
