"""Signed checkpoints of the audit chain (audit.checkpoints), append-only like the trail."""

from django.db import migrations, models

TRIGGER = """
CREATE TRIGGER portal_auditsignedcheckpoint_append_only
    BEFORE UPDATE OR DELETE ON portal_auditsignedcheckpoint
    FOR EACH ROW EXECUTE FUNCTION portal_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS portal_auditsignedcheckpoint_append_only ON portal_auditsignedcheckpoint;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0002_append_only_triggers"),
    ]

    operations = [
        migrations.CreateModel(
            name="SignedCheckpoint",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("event_id", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("signed_at", models.DateTimeField()),
                ("key_id", models.CharField(max_length=16)),
                ("public_key", models.CharField(help_text="Ed25519, raw, base64",
                                                max_length=64)),
                ("signature", models.CharField(help_text="Ed25519, base64", max_length=100)),
                ("reason", models.CharField(max_length=200)),
            ],
            options={
                "db_table": "portal_auditsignedcheckpoint",
                "ordering": ["-event_id"],
                "constraints": [models.UniqueConstraint(
                    fields=("event_id", "key_id"), name="audit_signed_checkpoint_unique")],
            },
        ),
        migrations.RunSQL(TRIGGER, DROP),
    ]
