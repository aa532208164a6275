"""The retention purge removes what is past two years, leaves a checkpoint, and is audited."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.utils import timezone

from audit.models import AuditCheckpoint, AuditEvent
from audit.retention import audit_purge_expired, retention_days
from audit.tasks import audit_retention_purge
from audit.trail import verify_chain
from catalog.models import Application, Environment, Release
from deployments.models import Deployment, DeploymentLogLine
from tests.audit.audit_helpers import record, sql

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    """Six events about three years old, three a year old, two from today."""
    old = [record("old", days_ago=1100 - 10 * i) for i in range(6)]
    year = [record("year", days_ago=365 - i) for i in range(3)]
    today = [record("today") for _ in range(2)]
    return old, year, today


def test_retention_defaults_to_two_years(settings):
    assert retention_days() == 730


def test_retention_can_be_longer_but_never_below_the_floor(settings):
    settings.PORTAL_AUDIT_RETENTION_DAYS = 2000
    assert retention_days() == 2000
    settings.PORTAL_AUDIT_RETENTION_DAYS = 90
    with pytest.raises(ImproperlyConfigured, match="below the floor of 730"):
        retention_days()
    with pytest.raises(ImproperlyConfigured):
        audit_purge_expired()


def test_purge_removes_expired_events_and_the_chain_still_verifies(history):
    old, year, today = history
    result = audit_purge_expired(batch_size=4)

    assert result.events_removed == 6
    remaining = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert remaining[:5] == ["year"] * 3 + ["today"] * 2
    assert remaining[5:] == ["audit.purged", "audit.purged"]  # one per batch of 4
    checkpoint = AuditCheckpoint.objects.order_by("-last_event_id").first()
    assert (checkpoint.last_event_id, checkpoint.last_hash) == (old[-1].pk, old[-1].hash)
    assert sum(c.events_removed for c in result.checkpoints) == 6

    report = verify_chain()
    assert report.ok, report.problem
    assert report.checked == 7 and report.first_event_id == year[0].pk
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert f"from retention checkpoint after event {old[-1].pk}" in out.getvalue()


def test_the_purge_is_audited_with_what_it_removed(history):
    audit_purge_expired()
    event = AuditEvent.objects.get(action="audit.purged")
    assert event.actor_kind == "system" and event.reason == "retention purge"
    assert event.after["events_removed"] == 6
    assert event.after["retention_days"] == 730
    assert event.object_type == "auditcheckpoint"


def test_a_longer_retention_keeps_more(history, settings):
    settings.PORTAL_AUDIT_RETENTION_DAYS = 1095  # three years
    assert audit_purge_expired().events_removed == 1  # only the one dated 1100 days ago
    assert verify_chain().ok


def test_purging_again_removes_nothing_and_writes_nothing(history):
    audit_purge_expired()
    count = AuditEvent.objects.count()
    result = audit_purge_expired()
    assert (result.events_removed, result.log_lines_removed) == (0, 0)
    assert AuditEvent.objects.count() == count


def test_repeated_purges_chain_their_checkpoints(history):
    audit_purge_expired()
    later = [record("later", days_ago=800) for _ in range(2)]  # backdated writes are refused
    # ...by the chain: they are newer by id, so they are not a prefix and stay.
    audit_purge_expired()
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in later]).count() == 2
    assert verify_chain().ok


def test_purge_refuses_to_erase_a_broken_chain(history):
    old = history[0]
    with transaction.atomic():
        sql("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
        sql("UPDATE portal_auditevent SET reason = 'x' WHERE id = %s", [old[2].pk])
        sql("ALTER TABLE portal_auditevent ENABLE TRIGGER USER")
    from audit.trail import AuditError

    with pytest.raises(AuditError, match=f"stopped at event {old[2].pk}"):
        audit_purge_expired()
    assert AuditEvent.objects.filter(pk=old[0].pk).exists()
    assert not AuditCheckpoint.objects.exists()


def test_purge_removes_expired_deployment_log_lines_only(demo):
    release = Release.objects.create(application=Application.objects.get(slug="storefront"),
                                     version="9.9.9", created_by=demo.engineer)
    deployment = Deployment.objects.create(
        application=release.application, release=release, status="succeeded",
        environment=Environment.objects.get(slug="staging"))
    now = timezone.now()
    for seq, days in enumerate([900, 750, 700, 1]):
        DeploymentLogLine.objects.create(deployment=deployment, seq=seq, message=f"{days}",
                                         at=now - timedelta(days=days))
    result = audit_purge_expired()
    assert result.log_lines_removed == 2
    assert list(deployment.log_lines.values_list("message", flat=True)) == ["700", "1"]
    assert AuditEvent.objects.get(action="audit.purged").after["log_lines_removed"] == 2


def test_the_beat_task_runs_the_purge(history):
    assert audit_retention_purge() == {"events_removed": 6, "log_lines_removed": 0}
    assert verify_chain().ok


def test_purge_command_reports_what_it_did(history):
    out = StringIO()
    call_command("purge_audit", stdout=out)
    assert "retention 730 days" in out.getvalue()
    assert "removed 6 events" in out.getvalue()


def test_a_purge_checkpoint_cannot_be_moved_to_hide_a_deletion(history):
    audit_purge_expired()
    with pytest.raises(DatabaseError), transaction.atomic():
        sql("UPDATE portal_auditcheckpoint SET last_event_id = last_event_id + 1")
