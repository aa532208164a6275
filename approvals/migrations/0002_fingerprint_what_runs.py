"""Approvals are bound to what runs as well: the executor and its settings, the targets
and the environment's deployment settings (approvals.services.fingerprint). Approvals
standing when this was introduced get these parts from the catalogue as it is now, so
the upgrade reopens nothing; an edit from now on reopens the gates concerned."""

import hashlib
import json

from django.db import migrations


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def forwards(apps, schema_editor):
    Approval = apps.get_model("approvals", "Approval")
    Target = apps.get_model("catalog", "Target")
    standing = (Approval.objects.filter(withdrawn_at__isnull=True)
                .select_related("change__release__application", "change__environment"))
    parts: dict[tuple[int, int], dict] = {}
    for approval in standing.iterator():
        change = approval.change
        app, env = change.release.application, change.environment
        key = (app.pk, env.pk)
        if key not in parts:
            targets = Target.objects.filter(application_id=app.pk,
                                            environment_id=env.pk).order_by("name")
            parts[key] = {
                "executor": _digest([app.executor, app.executor_settings or {}]),
                "targets": _digest([[t.name, t.address] for t in targets]),
                "environment_settings": _digest(env.deploy_settings or {}),
            }
        missing = {k: v for k, v in parts[key].items() if k not in approval.fingerprint}
        if missing:
            approval.fingerprint = {**approval.fingerprint, **missing}
            approval.save(update_fields=["fingerprint"])


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0001_initial"),
        ("catalog", "0003_environment_supersede_queued"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
