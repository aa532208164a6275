"""Who a self-starting deployment acts as, and approvals bound to risk, impact and time.

Existing changes that start by themselves act as their requester, as they did before.
Standing approvals gain the digests of the new concerns (risk, impact, scheduled time)
from the change as it is now, so that adding the concerns reopens nothing by itself.
"""

import hashlib
import json
from datetime import UTC

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _digest(value) -> str:
    # As approvals.services._digest, frozen here.
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def forwards(apps, schema_editor):
    ChangeRequest = apps.get_model("approvals", "ChangeRequest")
    Approval = apps.get_model("approvals", "Approval")
    for change in ChangeRequest.objects.filter(
            models.Q(deploy_when_approved=True) | models.Q(scheduled_for__isnull=False),
            deployer__isnull=True):
        change.deployer_id = change.requested_by_id
        change.save(update_fields=["deployer"])
    for approval in Approval.objects.filter(withdrawn_at__isnull=True).select_related("change"):
        change = approval.change
        when = change.scheduled_for
        parts = {
            "risk": _digest(change.risk),
            "impact": _digest(change.impact.strip()),
            "scheduled_for": _digest(when.astimezone(UTC).isoformat(timespec="seconds")
                                     if when else None),
        }
        missing = {k: v for k, v in parts.items() if k not in (approval.fingerprint or {})}
        if missing:
            approval.fingerprint = {**(approval.fingerprint or {}), **missing}
            approval.save(update_fields=["fingerprint"])


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0002_sop_controls'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='changerequest',
            name='deployer',
            field=models.ForeignKey(blank=True, help_text='Starts the deployment when it starts by itself.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
