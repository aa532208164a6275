"""Walk the audit chain and name the first broken link (DESIGN.md section 6)."""

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import verify_witnessed
from audit.models import AuditEvent
from audit.rechecks import recheck
from audit.trail import verify_chain


class Command(BaseCommand):
    help = ("Verify the hash chain of the audit trail from the latest retention checkpoint, "
            "then the database against every signed checkpoint the witness files hold; "
            "exit 1 and name the first broken link if an event was changed, deleted or "
            "reordered, or the first witnessed checkpoint the database no longer agrees "
            "with (a consistent rewrite of history).")

    def add_arguments(self, parser):
        parser.add_argument(
            "--anchor", action="append", default=[], metavar="HASH",
            help="A head hash printed by an earlier run (kept outside the database). It must "
                 "still be in the chain: this catches events removed from the end, which the "
                 "chain alone cannot show. May be given more than once.",
        )
        parser.add_argument(
            "--policies", action="store_true",
            help="Also re-evaluate each recorded decision (gates set at submission, "
                 "starts) with the policy version whose digest it names, and exit 1 on a "
                 "decision that version would not have taken (docs/policies.md).",
        )

    def handle(self, *args, anchor: list[str], policies: bool = False, **options):
        report = verify_chain()
        if not report.ok:
            raise CommandError(
                f"audit trail BROKEN at event {report.broken_event_id}: {report.problem} "
                f"({report.checked} events verified before it)"
            )
        for digest in anchor:
            if digest == report.head_hash or (
                    digest == getattr(report.checkpoint, "last_hash", None)):
                continue
            if not AuditEvent.objects.filter(hash=digest).exists():
                raise CommandError(
                    f"audit trail BROKEN: anchor {digest[:12]}… is no longer in the chain "
                    "(events were removed from its end, or it was rebuilt)"
                )
        witnessed = verify_witnessed()
        if not witnessed.ok:
            raise CommandError(f"audit trail BROKEN: {witnessed.problem}")
        checkpoint = report.checkpoint
        since = (f"retention checkpoint after event {checkpoint.last_event_id}"
                 if checkpoint else "the first event")
        self.stdout.write(
            f"audit trail OK: {report.checked} events verified from {since}; "
            f"head event {report.head_event_id} hash {report.head_hash}"
        )
        if witnessed.latest:
            latest = witnessed.latest
            self.stdout.write(
                f"witnessed checkpoints OK: {witnessed.checked} agree with the database "
                f"(latest: event {latest['event_id']} signed at {latest['signed_at']} by "
                f"key {latest['key_id']})"
                + (f"; {witnessed.before_retention} are older than the retention checkpoint"
                   if witnessed.before_retention else ""))
        else:
            self.stdout.write("no witnessed checkpoint to check against (witness files: "
                              f"{', '.join(witnessed.files) or 'none yet'})")
        if policies:
            agreed, lines = recheck("policies")
            for line in lines:
                self.stdout.write(line)
            if not agreed:
                raise CommandError("policy re-check: recorded decisions disagree with the "
                                   "policy versions they name")
