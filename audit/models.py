"""The audit trail's tables: the hash-chained events, the daily sign-in counts, the
purge's checkpoints and the signed checkpoints of the chain head."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core import clock


class AuditEvent(models.Model):
    """One append-only, hash-chained record of something someone or something did.

    Written only by ``audit.trail.audit_record`` inside the transaction of the
    change it records. ``prev_hash`` and ``hash`` chain every event to the one
    before it (SHA-256 over a canonical JSON form).
    """

    occurred_at = models.DateTimeField(default=clock.now, db_index=True)
    # DO_NOTHING: the actor id is part of the hashed record, so deleting a user must not
    # rewrite it (and the append-only trigger would refuse the UPDATE anyway).
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.DO_NOTHING, related_name="+", db_constraint=False)
    actor_name = models.CharField(max_length=150)
    actor_kind = models.CharField(max_length=10)  # user, api, system
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=300)
    environment = models.CharField(max_length=50, blank=True, db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "portal_auditevent"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["actor_name", "-id"], name="audit_actor_idx"),
            # The audit browser pages by id (keyset); each filter has an index that
            # yields its rows already in id order, so a page costs the same at any depth.
            models.Index(fields=["actor", "-id"], name="audit_actor_id_idx"),
            models.Index(fields=["action", "-id"], name="audit_action_id_idx"),
            models.Index(fields=["environment", "-id"], name="audit_env_id_idx"),
        ]
        permissions = [("view_audit_trail", "Can browse and export the audit trail")]

    def __str__(self) -> str:
        when = f"{self.occurred_at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.actor_name} {self.action} {self.object_repr}"


class SignInDay(models.Model):
    """Sign-ins per person and refused sign-ins per name typed, per day (UTC): what the
    access review counts, kept as the trail is written (``audit.trail.audit_record``) so
    the review reads a few rows per person however long the trail grows.

    Derived from the trail, never the other way round: ``audit.trail.rebuild_sign_in_days``
    recounts it from the ``auth.login`` and ``auth.login_failed`` events.
    """

    day = models.DateField()
    action = models.CharField(max_length=64)  # auth.login or auth.login_failed
    # The person signed in (auth.login); 0 for a refusal, which has no person.
    actor_id = models.IntegerField(default=0)
    # The name typed (auth.login_failed); empty for a sign-in.
    name = models.CharField(max_length=150, blank=True)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "portal_signinday"
        constraints = [
            # Also the index of "sign-ins since a day": one range per action.
            models.UniqueConstraint(fields=["action", "day", "actor_id", "name"],
                                    name="sign_in_day_unique"),
        ]
        indexes = [
            # Refused sign-ins are counted for the names of the people listed: a probe
            # per name, however many other names were tried (a password spray).
            models.Index(fields=["name", "day"], include=["count"],
                         condition=models.Q(action="auth.login_failed"),
                         name="sign_in_failed_name_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.action} {self.actor_id or self.name}: {self.count}"


class AuditCheckpoint(models.Model):
    """Where the retention purge cut the chain, so that verification still passes.

    The events up to and including ``last_event_id`` were removed; the oldest
    remaining event must carry ``last_hash`` as its ``prev_hash``. Append-only
    like the events (a PostgreSQL trigger refuses UPDATE and DELETE).
    """

    created_at = models.DateTimeField(default=clock.now)
    cutoff = models.DateTimeField(help_text="Events older than this were due for removal.")
    last_event_id = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    last_occurred_at = models.DateTimeField()
    events_removed = models.PositiveIntegerField()
    log_lines_removed = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "portal_auditcheckpoint"
        ordering = ["-last_event_id"]
        constraints = [
            models.UniqueConstraint(fields=["last_event_id"], name="audit_checkpoint_unique_event"),
        ]

    def __str__(self) -> str:
        return f"Purged through event {self.last_event_id} ({self.events_removed} events)"


class SignedCheckpoint(models.Model):
    """The database's copy of a signed checkpoint of the chain head (audit.checkpoints).

    The signature is over the canonical JSON of ``body()``; the private key is never
    stored. Copies here feed evidence bundles; ``verify_audit`` trusts only the
    witnesses' copies. Append-only (a PostgreSQL trigger refuses UPDATE and DELETE).
    """

    event_id = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_id = models.CharField(max_length=16)
    public_key = models.CharField(max_length=64, help_text="Ed25519, raw, base64")
    signature = models.CharField(max_length=100, help_text="Ed25519, base64")
    reason = models.CharField(max_length=200)

    class Meta:
        db_table = "portal_auditsignedcheckpoint"
        ordering = ["-event_id"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "key_id"],
                                    name="audit_signed_checkpoint_unique"),
        ]

    def __str__(self) -> str:
        return f"Checkpoint of event {self.event_id} signed by key {self.key_id}"

    def body(self) -> dict:
        return {"v": 1, "event_id": self.event_id, "hash": self.hash,
                "signed_at": self.signed_at.isoformat(), "key_id": self.key_id,
                "reason": self.reason}
