"""The demo history is decided under the first policy version: its submissions, gate
decisions and starts name it, and every one re-checks against it."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from approvals.models import PolicyVersion
from approvals.policy_checks import policy_events, recheck_events, verify_policies
from audit.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_the_demo_history_names_the_policy_and_re_checks_against_it():
    call_command("seed_demo", password=PASSWORD, history=True, history_size="small",
                 verbosity=0)
    version = PolicyVersion.objects.get(status=PolicyVersion.Status.ACTIVE)
    submitted = AuditEvent.objects.filter(action="change.submitted")
    assert submitted.count() > 10
    assert not submitted.exclude(after__policy_digest=version.digest).exists()
    assert AuditEvent.objects.filter(action="change.deploying",
                                     after__policy_digest=version.digest).exists()
    assert AuditEvent.objects.filter(action="gate.approved",
                                     after__policy_digest=version.digest).exists()
    results = recheck_events(policy_events())
    assert {r.version for r in results} == {1}
    agreed, lines = verify_policies()
    assert agreed, "\n".join(lines)
