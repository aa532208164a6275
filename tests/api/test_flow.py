"""The REST API of DESIGN.md section 7, driven as a CI system would."""

import pytest

from approvals.models import ChangeRequest
from audit.models import AuditEvent
from audit.trail import System
from deployments.models import Deployment
from identity.services import api_token_issue, api_token_revoke

RELEASE = {"application": "storefront", "version": "3.1.0", "commit_sha": "abc1234",
           "notes": "New basket."}


def register_release(client, **overrides):
    return client.post("/api/v1/releases/", {**RELEASE, **overrides}, format="json")


def test_ci_registers_requests_approves_and_deploys_through_the_api(demo, api):
    ci, techlead, qa = api(demo.ci), api(demo.techlead), api(demo.qa)

    created = register_release(ci)
    assert created.status_code == 201, created.json()
    release_id = created.json()["id"]
    reported = ci.post("/api/v1/hooks/ci", {"release": release_id, "check": "tests",
                                            "status": "passed"}, format="json")
    assert reported.status_code == 200, reported.json()
    assert reported.json()["checks"]["tests"]["status"] == "passed"

    change = ci.post("/api/v1/changes/", {"release": release_id, "environment": "staging",
                                          "change_type": "standard", "strategy": "all_at_once",
                                          "rollback_plan": "Redeploy 1.1.0"}, format="json")
    assert change.status_code == 201, change.json()
    body = change.json()
    assert body["status"] == "pending_approval"
    assert {g["gate"]: g["status"] for g in body["gates"]} == {"tech_lead": "pending",
                                                                "qa": "pending"}
    assert body["blockers"] == ["gate_tech_lead", "gate_qa"]
    cid = body["id"]

    early = ci.post(f"/api/v1/changes/{cid}/deploy")
    assert early.status_code == 409
    assert early.json()["code"] == "not_ready"
    assert [b["code"] for b in early.json()["blockers"]] == ["gate_tech_lead", "gate_qa"]

    ok = techlead.post(f"/api/v1/changes/{cid}/approve", {"gate": "tech_lead",
                                                          "comment": "Reviewed"}, format="json")
    assert ok.status_code == 200, ok.json()
    ok = qa.post(f"/api/v1/changes/{cid}/approve", {"gate": "qa"}, format="json")
    assert ok.json()["status"] == "approved"

    deployed = ci.post(f"/api/v1/changes/{cid}/deploy")
    assert deployed.status_code == 202, deployed.json()
    deployment_id = deployed.json()["deployment"]
    assert deployed.json()["status"] == "queued"

    detail = ci.get(f"/api/v1/deployments/{deployment_id}/").json()
    assert detail["version"] == "3.1.0"
    assert detail["environment"] == "staging"
    assert detail["steps"][0]["name"] == "pre_health_check"
    assert {s["status"] for s in detail["steps"]} == {"pending"}
    assert ci.get(f"/api/v1/changes/{cid}/").json()["deployment"] == deployment_id

    again = ci.post(f"/api/v1/changes/{cid}/deploy")
    assert again.status_code == 409
    assert again.json()["code"] == "already_deploying"
    assert Deployment.objects.count() == 1

    event = AuditEvent.objects.get(action="gate.approved", actor_name__startswith="techlead")
    assert event.actor_kind == "api"
    assert event.ip == "127.0.0.1"


def test_registering_the_same_release_twice_returns_it_and_different_content_conflicts(demo, api):
    ci = api(demo.engineer)
    first = register_release(ci)
    again = register_release(ci)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    clash = register_release(ci, notes="Something else")
    assert clash.status_code == 409
    assert clash.json()["code"] == "release_exists"


def test_release_with_bad_version_gets_field_errors(demo, api):
    response = register_release(api(demo.engineer), version="one point two")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "version" in response.json()["fields"]


def test_requester_cannot_approve_own_change_through_the_api(demo, api):
    techlead = api(demo.techlead)
    release_id = register_release(techlead).json()["id"]
    cid = techlead.post("/api/v1/changes/", {"release": release_id, "environment": "staging"},
                        format="json").json()["id"]
    response = techlead.post(f"/api/v1/changes/{cid}/approve", {"gate": "tech_lead"},
                             format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "self_approval"
    assert AuditEvent.objects.filter(action="gate.approved.refused").count() == 1


def test_approver_without_the_object_permission_gets_403(demo, api):
    cid = _staging_change(demo, api)
    response = api(demo.qa).post(f"/api/v1/changes/{cid}/approve", {"gate": "tech_lead"},
                                 format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "not_eligible"


def test_another_teams_change_is_not_found_for_an_outsider(demo, api):
    cid = _staging_change(demo, api)
    outsider = api(demo.outsider)
    assert outsider.get(f"/api/v1/changes/{cid}/").status_code == 404
    assert outsider.post(f"/api/v1/changes/{cid}/approve", {"gate": "qa"},
                         format="json").status_code == 404
    assert outsider.get("/api/v1/changes/").json()["results"] == []


def test_unknown_gate_and_missing_reject_comment_are_400(demo, api):
    cid = _staging_change(demo, api)
    qa = api(demo.qa)
    bad_gate = qa.post(f"/api/v1/changes/{cid}/approve", {"gate": "janitor"}, format="json")
    assert bad_gate.status_code == 400 and "gate" in bad_gate.json()["fields"]
    no_comment = qa.post(f"/api/v1/changes/{cid}/reject", {"gate": "qa"}, format="json")
    assert no_comment.status_code == 400 and "comment" in no_comment.json()["fields"]
    assert ChangeRequest.objects.get(pk=cid).status == "pending_approval"


def test_malformed_json_is_a_400_with_a_code(demo, api):
    response = api(demo.engineer).post("/api/v1/changes/", data="{not json",
                                       content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "malformed"


def test_requests_without_a_valid_token_get_401(demo, api):
    assert api().get("/api/v1/environments/").status_code == 401
    token, raw = api_token_issue(actor=System("test"), user=demo.engineer, name="ci")
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/environments/").status_code == 200
    api_token_revoke(actor=System("test"), token=token)
    revoked = client.get("/api/v1/environments/")
    assert revoked.status_code == 401
    assert revoked.json()["code"] == "authentication_failed"
    client.credentials(HTTP_AUTHORIZATION="Bearer nonsense")
    assert client.get("/api/v1/environments/").status_code == 401


def test_tokens_are_stored_hashed(demo):
    token, raw = api_token_issue(actor=System("test"), user=demo.engineer, name="ci")
    token.refresh_from_db()
    assert raw not in (token.token_hash, token.prefix, token.name)
    assert len(token.token_hash) == 64


def test_environments_and_applications_are_listed(demo, api):
    client = api(demo.engineer)
    envs = client.get("/api/v1/environments/").json()
    assert [(e["slug"], e["order"], e["locked"]) for e in envs] == [
        ("development", 1, False), ("staging", 2, False), ("production", 3, False)]
    assert [a["slug"] for a in client.get("/api/v1/applications/").json()] == ["storefront"]


def test_audit_events_are_for_auditors_and_admins_only(demo, api):
    _staging_change(demo, api)
    assert api(demo.engineer).get("/api/v1/audit-events/").status_code == 403
    response = api(demo.auditor).get("/api/v1/audit-events/?action=change.created")
    assert response.status_code == 200
    assert [e["action"] for e in response.json()["results"]] == ["change.created"]
    assert api(demo.admin).get("/api/v1/audit-events/").status_code == 200


def test_session_requests_need_csrf_but_token_requests_do_not(demo, client):
    from rest_framework.test import APIClient

    session = APIClient(enforce_csrf_checks=True)
    session.force_login(demo.engineer)
    response = session.post("/api/v1/releases/", RELEASE, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_openapi_schema_and_docs_are_served(demo, client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/api/v1/changes/{id}/approve", "/api/v1/changes/{id}/deploy",
                 "/api/v1/audit-events/", "/api/v1/releases/"):
        assert path in text
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/deployments/999999/", "/api/v1/changes/999999/",
                                  "/api/v1/releases/999999/"])
def test_missing_objects_are_404_with_a_code(demo, api, path):
    response = api(demo.engineer).get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def _staging_change(demo, api) -> int:
    ci = api(demo.engineer)
    release_id = register_release(ci).json()["id"]
    return ci.post("/api/v1/changes/", {"release": release_id, "environment": "staging"},
                   format="json").json()["id"]
