"""Backups of the portal's own database, and the restore drill (docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from audit.models import AuditEvent
from audit.trail import System
from portal.backups import backup_create, backup_restore

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def test_a_backup_restores_into_a_fresh_database_with_the_same_verified_trail(
        demo, tmp_path):
    events = AuditEvent.objects.count()
    assert events > 0
    dump = backup_create(actor=System("drill"), directory=tmp_path, keep=3)
    assert dump.exists() and dump.stat().st_size > 0
    recorded = AuditEvent.objects.get(action="portal.backup_created", object_id=dump.name)
    assert recorded.after["sha256"] and recorded.after["bytes"] == dump.stat().st_size

    db = connection.settings_dict
    fresh = f"restore_drill_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                            dbname="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{fresh}"')
    try:
        backup_restore(actor=System("drill"), path=dump, settings_dict={**db, "NAME": fresh})
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                             dbname=fresh) as restored:
            # The dump was taken before its own audit event was written.
            assert restored.execute("SELECT count(*) FROM portal_auditevent").fetchone()[0] \
                == events
        # The restored trail is checked against this test's own witnessed checkpoints
        # (tests.conftest gives each test its own witness files).
        env = dict(os.environ,
                   DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{fresh}",
                   PORTAL_AUDIT_WITNESS_FILES=",".join(settings.PORTAL_AUDIT_WITNESS_FILES),
                   PORTAL_AUDIT_PUBLIC_KEYS_FILE=str(settings.PORTAL_AUDIT_PUBLIC_KEYS_FILE),
                   PORTAL_AUDIT_SIGNING_KEY_FILE=str(settings.PORTAL_AUDIT_SIGNING_KEY_FILE))
        verified = subprocess.run([sys.executable, "manage.py", "verify_audit"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, verified.stderr
        assert f"audit trail OK: {events} events verified" in verified.stdout
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        admin.close()


def test_backups_keep_the_newest_n_and_say_which_were_removed(demo, tmp_path):
    made = [backup_create(actor=System("drill"), directory=tmp_path, keep=2)
            for _ in range(3)]
    assert sorted(p.name for p in tmp_path.glob("portal-*.dump")) == [p.name for p in made[1:]]
    last = AuditEvent.objects.filter(action="portal.backup_created").order_by("-id").first()
    assert last.after["removed"] == [made[0].name]
    assert not list(tmp_path.glob(".*partial"))


def test_a_missing_backup_file_is_refused_and_changes_nothing(demo, tmp_path):
    from core.errors import Invalid

    events = AuditEvent.objects.count()
    with pytest.raises(Invalid):
        backup_restore(actor=System("drill"), path=tmp_path / "nothing.dump")
    assert AuditEvent.objects.count() == events
