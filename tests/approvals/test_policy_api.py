"""The policy document over the API: the active version, proposing, testing; refusals
carry a status and a stable code."""

from __future__ import annotations

import yaml

from approvals.models import PolicyVersion
from tests.approvals.test_policy_versions import PAYMENTS, with_rules


def test_current_answers_the_active_version_digest_and_text(demo, api):
    answer = api(demo.engineer).get("/api/v1/policies/current")
    assert answer.status_code == 200
    body = answer.json()
    active = PolicyVersion.objects.get()
    assert (body["version"], body["digest"], body["document"]) == (
        1, active.digest, active.document)
    assert api().get("/api/v1/policies/current").status_code == 401


def test_a_tech_lead_proposes_and_the_version_waits_for_its_gates(demo, api):
    text = with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS)
    answer = api(demo.techlead).post("/api/v1/policies/", {"document": text,
                                                           "summary": "payments"},
                                     format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert (body["version"], body["status"], body["gates"], body["based_on"]) == (
        2, "proposed", {"cab": 1, "security": 1}, 1)
    assert body["url"] == "/policies/2/"
    # Still the first version in force.
    assert api(demo.engineer).get("/api/v1/policies/current").json()["version"] == 1


def test_proposals_are_refused_with_a_code(demo, api):
    active = PolicyVersion.objects.get().document
    client = api(demo.techlead)
    invalid = client.post("/api/v1/policies/", {"document": active + "surprise: 1\n"},
                          format="json")
    assert invalid.status_code == 400
    assert invalid.json()["code"] == "invalid"
    assert "document: unknown key 'surprise'" in str(invalid.json())
    failing = with_rules(active, examples=[
        {"name": "wrong", "facts": {"at": "2026-01-05T12:00:00Z",
                                    "change": {"environment": "staging"}},
         "expect": {"gates": {"cab": 1}}}])
    failed = client.post("/api/v1/policies/", {"document": failing}, format="json")
    assert failed.status_code == 422
    assert failed.json()["code"] == "policy_examples_failed"
    same = client.post("/api/v1/policies/", {"document": active}, format="json")
    assert same.status_code == 409 and same.json()["code"] == "policy_unchanged"
    engineer = api(demo.engineer).post("/api/v1/policies/",
                                       {"document": with_rules(active, rules=PAYMENTS)},
                                       format="json")
    assert engineer.status_code == 403 and engineer.json()["code"] == "not_permitted"
    not_yaml = client.post("/api/v1/policies/", {"document": "a: [1"}, format="json")
    assert not_yaml.status_code == 400 and not_yaml.json()["code"] == "invalid"
    assert PolicyVersion.objects.count() == 1


def test_testing_a_document_that_cannot_be_read_reports_its_problems(demo, api):
    answer = api(demo.engineer).post("/api/v1/policies/test",
                                     {"document": "policy: {unknown_key: 1}"}, format="json")
    assert answer.status_code == 200
    body = answer.json()
    assert body["passed"] is False and body["digest"] == "" and body["examples"] == 0
    assert body["problems"] and all(": " in problem for problem in body["problems"])
    assert PolicyVersion.objects.count() == 1


def test_testing_a_document_runs_its_examples_and_changes_nothing(demo, api):
    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["examples"][0]["expect"]["gates"] = {"cab": 9}
    answer = api(demo.engineer).post("/api/v1/policies/test",
                                     {"document": yaml.safe_dump(data)}, format="json")
    assert answer.status_code == 200
    body = answer.json()
    assert body["passed"] is False and body["examples"] == 9
    assert body["failures"] == [
        "example 1 (standard changes to development need their gates): expected gates "
        "{'cab': 9}, got {}"]
    assert PolicyVersion.objects.count() == 1
