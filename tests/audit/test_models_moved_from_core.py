"""The audit trail's models and the API token left the core app with their tables: their
content types follow them, so the permissions on them (the auditor's) and the grants
of those permissions keep pointing at the same rows."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.models import AuditEvent
from identity.models import ApiToken

BEFORE = ("core", "0007_signin_username_one_spelling")
MOVE = ("core", "0008_models_moved_to_audit_and_identity")


def _migrate(target) -> None:
    MigrationExecutor(connection).migrate([target])
    ContentType.objects.clear_cache()


def test_the_moved_models_keep_their_tables(db):
    assert AuditEvent._meta.db_table == "portal_auditevent"
    assert ApiToken._meta.db_table == "portal_apitoken"
    assert ContentType.objects.get_for_model(AuditEvent).app_label == "audit"
    assert ContentType.objects.get_for_model(ApiToken).app_label == "identity"


@pytest.mark.django_db(transaction=True)
def test_moving_the_content_types_keeps_the_auditor_permission_and_its_grants():
    permission = Permission.objects.get(content_type__app_label="audit",
                                        codename="view_audit_trail")
    auditors = Group.objects.create(name="trail-readers")
    auditors.permissions.add(permission)
    token_type = ContentType.objects.get_for_model(ApiToken).pk

    _migrate(BEFORE)
    try:
        assert ContentType.objects.get(pk=permission.content_type_id).app_label == "core"
        assert ContentType.objects.get(pk=token_type).app_label == "core"
    finally:
        _migrate(MOVE)

    assert ContentType.objects.get(pk=permission.content_type_id).app_label == "audit"
    assert ContentType.objects.get(pk=token_type).app_label == "identity"
    assert Permission.objects.get(pk=permission.pk).content_type.app_label == "audit"
    assert list(auditors.permissions.values_list("pk", flat=True)) == [permission.pk]
    reader = get_user_model().objects.create_user("trail-reader")
    reader.groups.add(auditors)
    assert reader.has_perm("audit.view_audit_trail")
