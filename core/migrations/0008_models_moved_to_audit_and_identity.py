"""The audit trail's models went to the audit app and the API token to the identity app
(audit 0001, identity 0001), with their tables: core forgets them (state only), and
their content types follow them, so that permissions (``audit.view_audit_trail``) and
object grants keep pointing at the same rows."""

from django.db import migrations

MOVED = {
    "auditevent": "audit",
    "signinday": "audit",
    "auditcheckpoint": "audit",
    "signedcheckpoint": "audit",
    "apitoken": "identity",
}


def _move(apps, moves):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    for model, (old, new) in moves.items():
        moving = ContentType.objects.filter(app_label=old, model=model).first()
        if moving is None:
            continue
        # One made for the new label in the meantime (``migrate audit`` alone creates
        # them after its own migrations): the old one, with its grants, wins.
        made = ContentType.objects.filter(app_label=new, model=model).first()
        if made is not None:
            Permission.objects.filter(content_type=made).delete()
            made.delete()
        moving.app_label = new
        moving.save(update_fields=["app_label"])
    ContentType.objects.clear_cache()


def forwards(apps, schema_editor):
    _move(apps, {model: ("core", app) for model, app in MOVED.items()})


def backwards(apps, schema_editor):
    _move(apps, {model: (app, "core") for model, app in MOVED.items()})


class Migration(migrations.Migration):

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("core", "0007_signin_username_one_spelling"),
        ("audit", "0001_initial"),
        ("identity", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="apitoken", name="user"),
                migrations.RemoveField(model_name="auditevent", name="actor"),
                migrations.DeleteModel(name="ApiToken"),
                migrations.DeleteModel(name="AuditCheckpoint"),
                migrations.DeleteModel(name="AuditEvent"),
                migrations.DeleteModel(name="SignedCheckpoint"),
                migrations.DeleteModel(name="SignInDay"),
            ],
            database_operations=[],
        ),
        migrations.RunPython(forwards, backwards),
    ]
