"""A write's answer is the change as the API shows it right after: creating, approving,
rejecting and cancelling answer with the body ``GET /api/v1/changes/{id}/`` returns."""

from __future__ import annotations

from tests.factories import ReleaseFactory, request_change


def _shown(client, pk: int) -> dict:
    answer = client.get(f"/api/v1/changes/{pk}/")
    assert answer.status_code == 200
    return answer.json()


def test_each_write_answers_with_the_change_as_shown(demo, api):
    engineer, techlead = api(demo.engineer), api(demo.techlead)
    created = engineer.post("/api/v1/changes/", {
        "release": ReleaseFactory().pk, "environment": "staging",
        "rollback_plan": "Redeploy the previous release."}, format="json")
    assert created.status_code == 201
    assert created.json() == _shown(engineer, created.json()["id"])
    assert created.json()["status"] == "pending_approval"

    approved = techlead.post(f"/api/v1/changes/{created.json()['id']}/approve",
                             {"gate": "tech_lead"}, format="json")
    assert approved.status_code == 200
    assert approved.json() == _shown(techlead, created.json()["id"])
    assert [g["status"] for g in approved.json()["gates"] if g["gate"] == "tech_lead"] == \
        ["approved"]

    other = request_change(demo.engineer, "staging")
    rejected = techlead.post(f"/api/v1/changes/{other.pk}/reject",
                             {"gate": "tech_lead", "comment": "not this week"}, format="json")
    assert rejected.status_code == 200
    assert rejected.json() == _shown(techlead, other.pk)
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["blockers"] == ["change_closed"]

    third = request_change(demo.engineer, "staging")
    cancelled = engineer.post(f"/api/v1/changes/{third.pk}/cancel", {}, format="json")
    assert cancelled.status_code == 200
    assert cancelled.json() == _shown(engineer, third.pk)
    assert cancelled.json()["status"] == "cancelled"
