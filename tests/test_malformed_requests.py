"""Malformed requests get a clear 400 or 404, never a 500."""

import base64

import pytest

from tests.factories import request_change


def forged_cursor(position: str) -> str:
    return base64.b64encode(f"p={position}".encode()).decode()


@pytest.mark.parametrize("path", ["/api/v1/deployments/", "/api/v1/changes/",
                                  "/api/v1/releases/"])
def test_a_forged_cursor_is_404(demo, api, path):
    response = api(demo.auditor).get(f"{path}?cursor={forged_cursor('abc')}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("query", ["at=9999-12-31T00:00:00Z", "at=0001-01-01T00:00:00Z"])
def test_preflight_refuses_dates_out_of_range(demo, api, query):
    from tests.factories import ReleaseFactory

    release = ReleaseFactory()
    response = api(demo.engineer).get(
        f"/api/v1/preflight/?release={release.pk}&environment=production&{query}")
    assert response.status_code == 400
    assert "at" in response.json()["fields"]


@pytest.mark.parametrize("query", ["until=0001-03-01T00:00:00Z",
                                   "since=9999-12-01T00:00:00Z&until=9999-12-31T00:00:00Z",
                                   "since=9999-12-01T00:00:00Z&until=9999-12-31T00:00:00Z"
                                   "&period=week"])
def test_dora_refuses_dates_out_of_range(demo, api, query):
    response = api(demo.auditor).get(f"/api/v1/metrics/dora/?{query}")
    assert response.status_code == 400


@pytest.mark.parametrize("user,url", [
    ("engineer", "/deployments/?application=%00"),
    ("techlead", "/approvals/?environment=%00"),
    ("techlead", "/approvals/?change_type=x%00y"),
    ("engineer", "/changes/?q=%00"),
])
def test_nul_in_a_query_string_is_400_on_pages(demo, client, user, url):
    client.force_login(getattr(demo, user))
    response = client.get(url)
    assert response.status_code == 400
    assert b"NUL" in response.content


def test_nul_in_a_form_field_is_400_and_changes_nothing(demo, client):
    change = request_change(demo.engineer, "staging")
    client.force_login(demo.engineer)
    response = client.post(f"/changes/{change.pk}/cancel", {"reason": "oops\x00"})
    assert response.status_code == 400
    change.refresh_from_db()
    assert change.status == "pending_approval"
    client.force_login(demo.oncall)
    assert client.post("/environments/", {"environment": "\x00", "reason": "x"}
                       ).status_code == 400


def test_nul_in_an_api_query_is_a_json_400(demo, api):
    response = api(demo.engineer).get("/api/v1/changes/?environment=%00")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
