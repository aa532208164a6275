"""A start restriction of the policy document refuses a start at the time it names, and
a start records the version it was allowed under."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from approvals import services
from approvals.models import ChangeRequest, PolicyVersion
from audit.models import AuditEvent
from core import clock
from core.errors import NotReady
from tests.approvals.test_controls import approve_all
from tests.approvals.test_policy_versions import adopt
from tests.factories import request_change

FRIDAY_AFTERNOON = {"name": "no-friday-afternoon-staging",
                    "when": 'change.environment == "staging" && local.weekday == "friday" '
                            "&& local.hour >= 12",
                    "reason": "nobody is around to watch it over the weekend"}


def next_friday(hour: int):
    now = clock.now()
    day = now + timedelta(days=(4 - now.weekday()) % 7 or 7)
    return day.replace(hour=hour, minute=30, second=0, microsecond=0)


@pytest.fixture
def restricted(demo, settings):
    settings.PORTAL_TASK_DISPATCH = "hold"
    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["start_restrictions"] = [FRIDAY_AFTERNOON]
    data["examples"] = [{
        "name": "Friday afternoon staging starts are refused",
        "facts": {"at": "2026-12-11T13:00:00Z", "action": "start",
                  "change": {"environment": "staging", "change_type": "standard"}},
        "expect": {"blockers": ["start_restricted"], "start_allowed": False}}]
    return adopt(demo, yaml.safe_dump(data, sort_keys=False))


def test_a_start_on_friday_afternoon_is_refused_and_on_friday_morning_allowed(
        demo, restricted):
    change = approve_all(request_change(demo.engineer, "staging"), demo)
    assert change.status == ChangeRequest.Status.APPROVED
    afternoon, morning = next_friday(13), next_friday(9)
    with clock.use(lambda: afternoon), pytest.raises(NotReady) as refused:
        services.change_request_deploy(actor=demo.engineer, change=change)
    codes = [b["code"] for b in refused.value.blockers]
    assert codes == ["start_restricted"]
    assert "nobody is around" in refused.value.detail
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    with clock.use(lambda: morning):
        services.change_request_deploy(actor=demo.engineer, change=change)
    started = AuditEvent.objects.get(action="change.deploying", object_id=str(change.pk))
    assert started.after["policy_digest"] == restricted.digest
    assert started.after["policy_facts"]["action"] == "start"
    assert started.after["policy_facts"]["actor"]["username"] == "engineer"
    from approvals.policy_checks import verify_policies
    agreed, lines = verify_policies()
    assert agreed, lines
