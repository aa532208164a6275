"""The demo history is decided under the policy versions in force at each moment: the
first, then the year-end freeze's, then the CAB meetings' (each proposed and approved
through the services); its submissions, gate decisions and starts name the version of
their time, and every one re-checks against it."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command

from approvals.models import PolicyVersion
from approvals.policy import rows as policy_rows
from approvals.policy_checks import policy_events, recheck_events, verify_policies
from audit.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_the_demo_history_names_the_policy_and_re_checks_against_it():
    call_command("seed_demo", password=PASSWORD, history=True, history_size="small",
                 verbosity=0)
    versions = list(PolicyVersion.objects.order_by("number"))
    assert [v.status for v in versions] == [PolicyVersion.Status.SUPERSEDED,
                                           PolicyVersion.Status.SUPERSEDED,
                                           PolicyVersion.Status.ACTIVE]
    assert all(v.proposed_by.username == "techlead" for v in versions[1:])
    digests = {v.digest: v.number for v in versions}
    submitted = AuditEvent.objects.filter(action="change.submitted")
    assert submitted.count() > 10
    named = {digests.get(e.after.get("policy_digest")) for e in submitted}
    assert None not in named and {2, 3} <= named  # each names a version of its time
    active = versions[-1]
    assert AuditEvent.objects.filter(action="change.deploying",
                                     after__policy_digest=active.digest).exists()
    assert AuditEvent.objects.filter(action="gate.approved",
                                     after__policy_digest=active.digest).exists()
    results = recheck_events(policy_events())
    assert {r.version for r in results} >= {2, 3}
    agreed, lines = verify_policies()
    assert agreed, "\n".join(lines)

    # The active document holds what the history added, and the rows are its compiled
    # form: exporting them gives the same policy.
    document = yaml.safe_load(active.document)
    production = document["environments"]["production"]
    assert [f["reason"] for f in production["freezes"]] == [
        "Year-end change freeze: peak trading and reduced staffing"]
    assert production["change_types"]["hotfix"]["risk_extra_gate"] == "security"
    exported = yaml.safe_load(policy_rows.render_rows())
    differing = {slug: (entry, document["environments"].get(slug))
                 for slug, entry in exported["environments"].items()
                 if entry != document["environments"].get(slug)}
    assert differing == {}
