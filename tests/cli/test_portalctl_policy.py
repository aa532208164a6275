"""portalctl policy export|test|import against a live portal, as a pipeline runs it."""

from __future__ import annotations

import pytest
import yaml

from approvals.models import PolicyVersion

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_pipeline_exports_tests_and_proposes_the_policy(portal_live, token, portalctl,
                                                          tmp_path):
    cast = portal_live
    lead = token(cast.techlead, "read", "request")
    path = tmp_path / "policy.yaml"
    exported = portalctl(lead, "policy", "export", "-o", str(path))
    assert exported.code == 0, exported.err
    active = PolicyVersion.objects.get()
    assert path.read_text() == active.document
    assert f"policy v1 digest {active.digest}" in exported.err

    data = yaml.safe_load(path.read_text())
    data["rules"] = [{"name": "payments-need-security",
                      "when": '"payments" in change.applications', "gates": {"security": 1}}]
    data["examples"].append({
        "name": "payments need security in staging",
        "facts": {"at": "2026-01-05T12:00:00Z",
                  "change": {"environment": "staging", "change_type": "standard",
                             "applications": ["payments"]}},
        "expect": {"gates": {"qa": 1, "tech_lead": 1}}})  # wrong on purpose
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    failing = portalctl(lead, "policy", "test", str(path))
    assert failing.code == 1, failing.err
    assert "FAIL example 10 (payments need security in staging)" in failing.err
    refused = portalctl(lead, "policy", "import", str(path))
    assert refused.code == 2
    assert "policy_examples_failed" in refused.err

    data["examples"][-1]["expect"]["gates"] = {"qa": 1, "security": 1, "tech_lead": 1}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    passing = portalctl(lead, "policy", "test", str(path))
    assert passing.code == 0, passing.err
    proposed = portalctl(lead, "policy", "import", str(path), "--summary", "payments")
    assert proposed.code == 0, proposed.err
    assert proposed.out.strip() == "2"
    assert "it needs cab x 1, security x 1" in proposed.err
    assert PolicyVersion.objects.get(number=2).status == PolicyVersion.Status.PROPOSED
