"""PostgreSQL refuses UPDATE and DELETE on the audit trail and deployment logs."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.utils import timezone

from audit.models import AuditCheckpoint, AuditEvent
from catalog.models import Application, Environment, Release
from deployments.models import Deployment, DeploymentLogLine
from tests.audit.audit_helpers import record, sql

pytestmark = pytest.mark.django_db


def refused(statement: str, params=None, *, purge: bool = False) -> str:
    with pytest.raises(DatabaseError) as exc, transaction.atomic():
        if purge:
            sql("SET LOCAL portal.audit_purge = 'on'")
        sql(statement, params)
    return str(exc.value)


def test_update_of_an_audit_event_is_refused_by_the_database():
    event = record()
    message = refused("UPDATE portal_auditevent SET action = 'x' WHERE id = %s", [event.pk])
    assert "append-only" in message
    assert AuditEvent.objects.get(pk=event.pk).action == "thing.done"


def test_delete_of_an_audit_event_is_refused_by_the_database():
    event = record()
    assert "append-only" in refused("DELETE FROM portal_auditevent WHERE id = %s", [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_orm_update_and_delete_are_refused_too():
    event = record()
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(reason="edited")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).reason == "test"


def test_purge_setting_does_not_allow_deleting_events_younger_than_two_years():
    event = record(days_ago=729)
    message = refused("DELETE FROM portal_auditevent WHERE id = %s", [event.pk], purge=True)
    assert "younger than the 730 day floor" in message
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_purge_setting_allows_deleting_events_older_than_two_years():
    old, young = record(days_ago=731), record()
    with transaction.atomic():
        sql("SET LOCAL portal.audit_purge = 'on'")
        assert sql("DELETE FROM portal_auditevent WHERE id = %s", [old.pk]) == 1
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [young.pk]


@pytest.mark.django_db(transaction=True)
def test_purge_setting_is_local_to_its_transaction():
    old = record(days_ago=800)
    with transaction.atomic():
        sql("SET LOCAL portal.audit_purge = 'on'")
    assert "append-only" in refused("DELETE FROM portal_auditevent WHERE id = %s", [old.pk])


def test_purge_setting_never_allows_an_update():
    old = record(days_ago=800)
    message = refused("UPDATE portal_auditevent SET reason = 'x' WHERE id = %s", [old.pk],
                      purge=True)
    assert "UPDATE on portal_auditevent refused" in message


@pytest.fixture
def deployment(demo):
    release = Release.objects.create(application=Application.objects.get(slug="storefront"),
                                     version="9.9.9", created_by=demo.engineer)
    return Deployment.objects.create(application=release.application, release=release,
                                     environment=Environment.objects.get(slug="staging"),
                                     status="succeeded")


def test_deployment_log_lines_cannot_be_edited_or_deleted(deployment):
    line = DeploymentLogLine.objects.create(deployment=deployment, seq=1, message="deployed")
    assert "append-only" in refused(
        "UPDATE deployments_deploymentlogline SET message = 'x' WHERE id = %s", [line.pk])
    assert "append-only" in refused(
        "DELETE FROM deployments_deploymentlogline WHERE id = %s", [line.pk])
    assert "younger than the 730 day floor" in refused(
        "DELETE FROM deployments_deploymentlogline WHERE id = %s", [line.pk], purge=True)
    assert DeploymentLogLine.objects.get(pk=line.pk).message == "deployed"


def test_expired_log_lines_can_be_deleted_by_the_purge(deployment):
    line = DeploymentLogLine.objects.create(deployment=deployment, seq=1, message="old",
                                            at=timezone.now() - timedelta(days=731))
    with transaction.atomic():
        sql("SET LOCAL portal.audit_purge = 'on'")
        assert sql("DELETE FROM deployments_deploymentlogline WHERE id = %s", [line.pk]) == 1


def test_checkpoints_cannot_be_edited_or_deleted_even_by_the_purge():
    checkpoint = AuditCheckpoint.objects.create(
        cutoff=timezone.now(), last_event_id=1, last_hash="a" * 64,
        last_occurred_at=timezone.now() - timedelta(days=900), events_removed=1)
    assert "append-only" in refused(
        "UPDATE portal_auditcheckpoint SET last_hash = %s", ["b" * 64])
    assert "append-only" in refused(
        "DELETE FROM portal_auditcheckpoint WHERE id = %s", [checkpoint.pk], purge=True)


def test_deleting_a_user_keeps_their_events_unchanged(db):
    from audit.trail import audit_record

    user = get_user_model().objects.create_user("leaver")
    with transaction.atomic():
        event = audit_record(actor=user, action="thing.done", object_type="thing",
                             object_id="1", object_repr="a thing")
    user_id = user.pk
    user.delete()
    event.refresh_from_db()
    assert (event.actor_id, event.actor_name) == (user_id, "leaver")


@pytest.mark.django_db(transaction=True)
def test_flushing_the_database_between_transactional_tests_still_works():
    # pytest-django empties tables with TRUNCATE after transactional tests; row
    # triggers do not fire for it, so the rest of the suite keeps working.
    record()
    call_command("flush", interactive=False, verbosity=0)
    assert not AuditEvent.objects.exists()
