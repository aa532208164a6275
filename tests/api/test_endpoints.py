"""Every contract endpoint: filters, cursor pages, CSV, logs, preflight, checklist,
rollback, DORA, rate limits, errors, CSRF, and refusals per role."""

from __future__ import annotations

import csv
import io

from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from core.throttling import UserThrottle
from deployments.models import DeploymentLogLine
from tests.api.helpers import finished_deployment
from tests.factories import ReleaseFactory, request_change


def test_changes_are_filtered_and_paged_with_a_cursor(demo, api):
    staging = [request_change(demo.engineer, "staging") for _ in range(3)]
    request_change(demo.engineer, "development")
    ci = api(demo.engineer)
    page = ci.get("/api/v1/changes/?environment=staging&page_size=2").json()
    assert len(page["results"]) == 2 and page["next"]
    rest = ci.get(page["next"]).json()
    seen = [c["id"] for c in page["results"] + rest["results"]]
    assert sorted(seen) == sorted(c.pk for c in staging)
    assert rest["next"] is None
    assert ci.get("/api/v1/changes/?status=approved&environment=development").json()[
        "results"][0]["environment"] == "development"
    assert ci.get("/api/v1/changes/?application=nothing").json()["results"] == []
    assert len(ci.get("/api/v1/changes/?change_type=standard").json()["results"]) == 4
    bad = ci.get("/api/v1/changes/?status=sideways")
    assert bad.status_code == 400 and "status" in bad.json()["fields"]


def test_the_change_list_costs_the_same_queries_for_more_rows(demo, api):
    ci = api(demo.engineer)
    request_change(demo.engineer, "staging")
    ci.get("/api/v1/changes/")
    with CaptureQueriesContext(connection) as few:
        ci.get("/api/v1/changes/")
    for _ in range(5):
        request_change(demo.engineer, "staging")
    with CaptureQueriesContext(connection) as many:
        ci.get("/api/v1/changes/")
    assert len(many) == len(few)


def test_deployments_are_filtered(demo, api):
    finished_deployment("staging", status="failed")
    ok = finished_deployment("staging")
    finished_deployment("development")
    ci = api(demo.engineer)
    body = ci.get("/api/v1/deployments/?environment=staging&status=succeeded").json()
    assert [d["id"] for d in body["results"]] == [ok.pk]
    assert body["results"][0]["duration_seconds"] == 300.0
    assert len(ci.get(f"/api/v1/deployments/?release={ok.release_id}").json()["results"]) == 1


def test_deployment_log_returns_the_lines_after_n(demo, api):
    deployment = finished_deployment("staging")
    DeploymentLogLine.objects.bulk_create(
        DeploymentLogLine(deployment=deployment, seq=i, message=f"line {i}") for i in range(1, 6))
    ci = api(demo.engineer)
    assert [x["seq"] for x in ci.get(f"/api/v1/deployments/{deployment.pk}/log").json()] == \
        [1, 2, 3, 4, 5]
    rest = ci.get(f"/api/v1/deployments/{deployment.pk}/log?after=3").json()
    assert [x["message"] for x in rest] == ["line 4", "line 5"]
    assert ci.get(f"/api/v1/deployments/{deployment.pk}/log?after=-1").status_code == 400
    assert api(demo.outsider).get(f"/api/v1/deployments/{deployment.pk}/log").status_code == 404


def test_audit_events_filter_and_stream_as_csv(demo, api):
    change = request_change(demo.engineer, "staging")
    auditor = api(demo.auditor)
    body = auditor.get(f"/api/v1/audit-events/?object_type=changerequest&object_id={change.pk}"
                       "&actor=engineer&environment=staging").json()
    assert {e["action"] for e in body["results"]} == {"change.created", "change.risk_assessed",
                                                      "change.submitted"}
    since = body["results"][-1]["occurred_at"]
    assert auditor.get("/api/v1/audit-events/?until=2000-01-01T00:00:00Z").json()[
        "results"] == []
    assert auditor.get(f"/api/v1/audit-events/?since={since.replace('+', '%2B')}"
                       "&action=change.submitted").json()["results"][0]["action"] == \
        "change.submitted"
    streamed = auditor.get(f"/api/v1/audit-events/?format=csv&object_id={change.pk}"
                           "&object_type=changerequest")
    assert streamed.status_code == 200
    assert streamed["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(streamed.streaming_content).decode())))
    assert [r["action"] for r in rows] == ["change.created", "change.risk_assessed",
                                           "change.submitted"]
    assert api(demo.engineer).get("/api/v1/audit-events/?format=csv").status_code == 403
    assert auditor.get("/api/v1/audit-events/?format=xml").status_code == 400


def test_preflight_lists_every_blocker_and_the_earliest_time(demo, api):
    release = ReleaseFactory()
    ci = api(demo.engineer)
    answer = ci.get(f"/api/v1/preflight/?release={release.pk}&environment=production"
                    "&change_type=standard&at=2030-01-01T12:00:00Z")
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    codes = {b["code"] for b in body["blockers"]}
    assert {"gate_cab", "gate_security", "gate_business"} <= codes
    assert body["ready"] is False and body["release"] == release.pk
    by_version = ci.get(f"/api/v1/preflight/?application=storefront&version={release.version}"
                        "&environment=development").json()
    assert by_version["ready"] is True, by_version
    assert ci.get("/api/v1/preflight/?environment=staging").status_code == 400
    assert ci.get(f"/api/v1/preflight/?release={release.pk}&environment=moon").status_code == 404


def test_checklist_items_are_ticked_through_the_api(demo, api):
    change = request_change(demo.engineer, "production", rollback_plan="Redeploy",
                            on_call=demo.oncall)
    manual = change.checklist.filter(auto_check="").first()
    automatic = change.checklist.exclude(auto_check="").first()
    ci = api(demo.engineer)
    ticked = ci.post(f"/api/v1/changes/{change.pk}/checklist/{manual.pk}",
                     {"done": True, "note": "Reviewed in PR 12"}, format="json")
    assert ticked.status_code == 200, ticked.json()
    assert ticked.json()["done"] is True and ticked.json()["note"] == "Reviewed in PR 12"
    items = {i["id"]: i for i in ci.get(f"/api/v1/changes/{change.pk}/").json()["checklist"]}
    assert items[manual.pk]["done"] is True and items[automatic.pk]["automatic"] is True
    refused = ci.post(f"/api/v1/changes/{change.pk}/checklist/{automatic.pk}", {"done": True},
                      format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "automatic_item"
    outsider = api(demo.outsider).post(f"/api/v1/changes/{change.pk}/checklist/{manual.pk}",
                                       {"done": True}, format="json")
    assert outsider.status_code == 404


def test_rollback_through_the_api_answers_with_the_rollback_deployment(demo, api):
    finished_deployment("staging", minutes_ago=120)
    latest = finished_deployment("staging", minutes_ago=10)
    refused = api(demo.engineer).post(f"/api/v1/deployments/{latest.pk}/rollback",
                                      {"reason": "errors"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "not_permitted"
    no_reason = api(demo.oncall).post(f"/api/v1/deployments/{latest.pk}/rollback", {},
                                      format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["fields"]
    answer = api(demo.oncall).post(f"/api/v1/deployments/{latest.pk}/rollback",
                                   {"reason": "error rate up"}, format="json")
    assert answer.status_code == 202, answer.json()
    assert answer.json()["status"] == "queued" and answer.json()["id"] != latest.pk
    assert answer.json()["kind"] == "rollback"
    assert answer.json()["rolled_back_deployment"] == latest.pk
    assert {"target", "phase", "attempts"} <= set(answer.json()["steps"][0])
    assert answer.json()["verdicts"] == []
    twice = api(demo.oncall).post(f"/api/v1/deployments/{latest.pk}/rollback",
                                  {"reason": "again"}, format="json")
    assert twice.status_code == 409


def test_dora_metrics_answer_for_a_token_with_the_read_scope(demo, scoped):
    finished_deployment("production", status="failed", minutes_ago=300)
    finished_deployment("production", minutes_ago=60)
    answer = scoped(demo.engineer, "read").get("/api/v1/metrics/dora/?environment=production")
    assert answer.status_code == 200, answer.json()
    assert api_error(scoped(demo.engineer, "read").get(
        "/api/v1/metrics/dora/?environment=moon")) == (400, "no_such_object")


def test_too_many_requests_get_429_with_a_code(demo, api, monkeypatch):
    monkeypatch.setattr(UserThrottle, "THROTTLE_RATES", {"user": "3/min"})
    ci = api(demo.techlead)
    answers = [ci.get("/api/v1/environments/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["code"] == "rate_limited"
    assert int(answers[-1]["Retry-After"]) > 0


def test_unknown_api_paths_and_methods_answer_json(demo, api):
    ci = api(demo.engineer)
    missing = ci.post("/api/v1/nothing-here", {}, format="json")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = ci.delete("/api/v1/changes/")
    assert wrong.status_code in (403, 405) and "code" in wrong.json()
    nul = ci.post("/api/v1/releases/", {"application": "storefront", "version": "1.0.0\u0000"},
                  format="json")
    assert nul.status_code == 400 and nul.json()["code"] == "malformed"


def test_session_requests_need_csrf_and_token_requests_do_not(demo, api):
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(demo.engineer)
    body = {"application": "storefront", "version": "6.0.0"}
    refused = session.post("/api/v1/releases/", body, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    session.get("/tokens/")
    token = session.cookies["csrftoken"].value
    assert session.post("/api/v1/releases/", body, format="json",
                        HTTP_X_CSRFTOKEN=token).status_code == 201
    assert session.get("/api/v1/releases/").status_code == 200
    tokened = APIClient(enforce_csrf_checks=True)
    tokened.credentials(HTTP_AUTHORIZATION=api(demo.engineer)._credentials["HTTP_AUTHORIZATION"])
    assert tokened.post("/api/v1/releases/", {**body, "version": "6.0.1"},
                        format="json").status_code == 201


def api_error(answer) -> tuple[int, str]:
    return answer.status_code, answer.json()["code"]


# Per endpoint and role: who is refused, and with which code.
def _refusals(demo):
    staging = request_change(demo.engineer, "staging")
    production = request_change(demo.engineer, "production", rollback_plan="r",
                                on_call=demo.oncall)
    deployment = finished_deployment("staging")
    return [
        ("qa", "post", f"/api/v1/changes/{staging.pk}/approve", {"gate": "tech_lead"}, 403,
         "not_eligible"),
        ("engineer", "post", f"/api/v1/changes/{staging.pk}/approve", {"gate": "qa"}, 403,
         "self_approval"),
        ("cab", "post", f"/api/v1/changes/{staging.pk}/approve", {"gate": "qa"}, 404,
         "not_found"),
        ("techlead", "post", f"/api/v1/changes/{production.pk}/reject",
         {"gate": "cab", "comment": "no"}, 403, "not_eligible"),
        ("engineer", "post", f"/api/v1/changes/{production.pk}/deploy", {}, 403,
         "not_permitted"),
        ("qa", "post", f"/api/v1/changes/{staging.pk}/cancel", {}, 403, "not_permitted"),
        ("qa", "post", f"/api/v1/deployments/{deployment.pk}/rollback", {"reason": "x"}, 403,
         "not_permitted"),
        ("qa", "post", f"/api/v1/deployments/{deployment.pk}/cancel", {}, 403, "not_permitted"),
        ("qa", "post", "/api/v1/releases/", {"application": "storefront", "version": "7.0.0"},
         403, "not_permitted"),
        ("outsider", "get", f"/api/v1/changes/{staging.pk}/", None, 404, "not_found"),
        ("outsider", "get", f"/api/v1/deployments/{deployment.pk}/", None, 404, "not_found"),
        ("outsider", "post", f"/api/v1/changes/{staging.pk}/deploy", {}, 404, "not_found"),
        ("outsider", "post", "/api/v1/changes/", {"release": staging.release_id,
                                                  "environment": "staging"}, 403,
         "not_permitted"),
        ("engineer", "get", "/api/v1/audit-events/", None, 403, "forbidden"),
        (None, "get", "/api/v1/changes/", None, 401, "not_authenticated"),
        (None, "post", f"/api/v1/changes/{staging.pk}/approve", {"gate": "qa"}, 401,
         "not_authenticated"),
    ]


def test_each_endpoint_refuses_each_role_without_the_permission(demo, api):
    for role, method, path, body, status, code in _refusals(demo):
        client = api(getattr(demo, role)) if role else APIClient()
        answer = getattr(client, method)(path, body, format="json")
        assert (answer.status_code, answer.json()["code"]) == (status, code), (role, path,
                                                                              answer.json())


def test_docs_are_served_without_the_internet(demo, client):
    page = client.get("/api/docs/").content.decode()
    assert "cdn.jsdelivr.net" not in page and "swagger-ui" in page
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/changes/{id}/deploy"]["post"]
    assert {"202", "400", "401", "403", "404", "409", "422", "429"} <= set(operation["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    assert schema["paths"]["/api/v1/hooks/ci"]["post"]["security"]
