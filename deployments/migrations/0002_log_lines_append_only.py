"""Deployment log lines are append-only, as the audit trail is (SOP 13.1).

UPDATE is refused; DELETE only inside the retention purge and only for rows older
than the retention floor. The trigger function is the audit trail's
(core 0002_append_only_triggers).
"""

from django.db import migrations

# SOP 13.1: deployment logs are kept for two years. Keep in step with
# audit.retention.RETENTION_FLOOR_DAYS.
FLOOR_DAYS = 730

CREATE = f"""
CREATE TRIGGER deployments_deploymentlogline_append_only
    BEFORE UPDATE OR DELETE ON deployments_deploymentlogline
    FOR EACH ROW EXECUTE FUNCTION portal_append_only('at', '{FLOOR_DAYS}');
"""

DROP = """
DROP TRIGGER IF EXISTS deployments_deploymentlogline_append_only ON deployments_deploymentlogline;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0002_append_only_triggers"),
        ("deployments", "0001_initial"),
    ]

    operations = [migrations.RunSQL(CREATE, DROP)]
