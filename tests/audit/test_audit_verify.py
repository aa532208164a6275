"""manage.py verify_audit names the first broken link of the chain."""

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from audit.trail import GENESIS_HASH, verify_chain
from tests.audit.audit_helpers import record, sql, triggers_disabled

pytestmark = pytest.mark.django_db


def verify() -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def broken() -> str:
    with pytest.raises(CommandError) as exc:
        verify()
    return str(exc.value)


@pytest.fixture
def chain():
    return [record(f"step.{i}", object_id=str(i)) for i in range(5)]


def test_an_untouched_trail_verifies_and_prints_its_head(chain):
    out = verify()
    assert "audit trail OK: 5 events verified from the first event" in out
    assert chain[-1].hash in out
    assert chain[0].prev_hash == GENESIS_HASH


def test_the_real_workflow_writes_a_chain_that_verifies(demo):
    from tests.factories import request_change

    request_change(demo.engineer, "staging")
    report = verify_chain()
    assert report.ok and report.checked == AuditEvent.objects.count() > 2


def test_a_changed_field_is_named_as_the_first_broken_link(chain):
    with triggers_disabled():
        sql("UPDATE portal_auditevent SET after = '{\"status\": \"approved\"}' WHERE id = %s",
            [chain[2].pk])
    message = broken()
    assert f"BROKEN at event {chain[2].pk}" in message
    assert "altered after it was written" in message
    assert "2 events verified before it" in message


def test_a_rewritten_hash_is_caught_at_the_next_event(chain):
    # A tamperer who changes a field and recomputes its hash still breaks the link after it.
    from audit.trail import compute_hash

    event = chain[1]
    event.actor_name = "someone-else"
    with triggers_disabled():
        sql("UPDATE portal_auditevent SET actor_name = %s, hash = %s WHERE id = %s",
            [event.actor_name, compute_hash(event), event.pk])
    message = broken()
    assert f"BROKEN at event {chain[2].pk}" in message
    assert f"should follow event {chain[1].pk}" in message
    assert "rewritten together with its hash" in message


def test_a_deleted_event_is_named(chain):
    with triggers_disabled():
        sql("DELETE FROM portal_auditevent WHERE id = %s", [chain[2].pk])
    message = broken()
    assert f"BROKEN at event {chain[3].pk}" in message
    assert f"should follow event {chain[1].pk}" in message
    assert "was deleted" in message


def test_deleting_the_oldest_events_without_a_checkpoint_is_caught(chain):
    with triggers_disabled():
        sql("DELETE FROM portal_auditevent WHERE id <= %s", [chain[1].pk])
    message = broken()
    assert f"BROKEN at event {chain[2].pk}" in message
    assert "no checkpoint explains" in message


def test_reordered_events_are_named(chain):
    a, b = chain[1].pk, chain[2].pk
    with triggers_disabled():
        sql("UPDATE portal_auditevent SET id = -1 WHERE id = %s", [a])
        sql("UPDATE portal_auditevent SET id = %s WHERE id = %s", [a, b])
        sql("UPDATE portal_auditevent SET id = %s WHERE id = -1", [b])
    message = broken()
    assert f"BROKEN at event {a}" in message
    assert f"follows event {b}: the rows were reordered" in message


def test_deleting_a_backdated_event_under_the_purge_setting_is_still_detected(chain):
    # The purge setting lets only old rows go, and even then the missing link shows:
    # here an event dated three years back sits in the middle of the chain.
    old = record("old.thing", days_ago=900)
    after = record("after.gap")
    sql("SET LOCAL portal.audit_purge = 'on'")
    sql("DELETE FROM portal_auditevent WHERE id = %s", [old.pk])
    sql("SET LOCAL portal.audit_purge = 'off'")
    message = broken()
    assert f"BROKEN at event {after.pk}" in message
    assert "was deleted" in message


def test_an_anchor_catches_events_removed_from_the_end(chain):
    head = chain[-1].hash
    with triggers_disabled():
        sql("DELETE FROM portal_auditevent WHERE id = %s", [chain[-1].pk])
    from io import StringIO

    call_command("verify_audit", stdout=StringIO())  # the chain alone cannot tell
    with pytest.raises(CommandError) as exc:
        call_command("verify_audit", anchor=[head], stdout=StringIO())
    assert "no longer in the chain" in str(exc.value)
