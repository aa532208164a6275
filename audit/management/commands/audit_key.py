"""The audit signing key: show its public key, or rotate it (docs/audit.md)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import audit_key_rotate, signing_key
from audit.trail import AuditError, System


class Command(BaseCommand):
    help = ("Show the public key that signs audit checkpoints (to pin it in the offline "
            "verifier), or rotate to a new key: old checkpoints stay verifiable.")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["show", "rotate"])
        parser.add_argument("--actor", default="",
                            help="Username recorded as the one who rotated the key "
                                 "(default: the system, naming this command).")

    def handle(self, *args, action: str, actor: str, **options):
        try:
            if action == "show":
                key = signing_key()
                self.stdout.write(f"key id {key.key_id}\npublic key (Ed25519, base64) "
                                  f"{key.public_b64}")
                return
            who = System("manage.py audit_key rotate")
            if actor:
                who = get_user_model().objects.filter(username=actor).first()
                if who is None:
                    raise CommandError(f"no user {actor!r}")
            old, new, result = audit_key_rotate(actor=who)
        except AuditError as exc:
            raise CommandError(str(exc)) from None
        witnessed = ", ".join(result.witnessed) or "no witness"
        self.stdout.write(f"audit signing key rotated: {old} -> {new}; the rotation "
                          f"event {result.checkpoint.event_id if result.checkpoint else '?'} "
                          f"is signed by the new key and witnessed by {witnessed}")
        if result.failed:
            self.stderr.write(f"NOT witnessed by: {', '.join(result.failed)}")
