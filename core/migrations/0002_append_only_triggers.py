"""Append-only audit trail, enforced by PostgreSQL (DESIGN.md section 6).

``portal_append_only()`` is the trigger function every append-only table uses (the
deployment log lines attach it in deployments 0002). UPDATE is always refused on the
audit events and the retention checkpoints. DELETE is refused too, except inside the retention purge:
a transaction that has run ``SET LOCAL portal.audit_purge = 'on'`` may delete rows
older than the retention floor (SOP 13.1: logs are kept for two years), never
younger ones, whatever the application asks for. TRUNCATE fires no row trigger;
it needs table ownership, which the application role should not hold in production
(see docs/audit.md).
"""

from django.db import migrations

# SOP 13.1: deployment logs are kept for two years. Keep in step with
# audit.retention.RETENTION_FLOOR_DAYS.
FLOOR_DAYS = 730

CREATE = f"""
CREATE OR REPLACE FUNCTION portal_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_time timestamptz;
BEGIN
    IF TG_OP = 'DELETE' AND TG_NARGS = 2
       AND current_setting('portal.audit_purge', true) = 'on' THEN
        row_time := (to_jsonb(OLD) ->> TG_ARGV[0])::timestamptz;
        IF row_time < now() - make_interval(days => TG_ARGV[1]::int) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'retention purge refused on %: row % is younger than the % day floor',
            TG_TABLE_NAME, to_jsonb(OLD) ->> 'id', TG_ARGV[1]
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION '% on % refused: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER portal_auditevent_append_only
    BEFORE UPDATE OR DELETE ON portal_auditevent
    FOR EACH ROW EXECUTE FUNCTION portal_append_only('occurred_at', '{FLOOR_DAYS}');

CREATE TRIGGER portal_auditcheckpoint_append_only
    BEFORE UPDATE OR DELETE ON portal_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION portal_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS portal_auditcheckpoint_append_only ON portal_auditcheckpoint;
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_append_only();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0001_initial"),
    ]

    operations = [migrations.RunSQL(CREATE, DROP)]
