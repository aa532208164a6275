"""Remove audit events and deployment logs past retention, leaving a checkpoint."""

from django.core.management.base import BaseCommand

from audit.retention import audit_purge_expired, retention_days


class Command(BaseCommand):
    help = ("Remove audit events and deployment log lines older than "
            "PORTAL_AUDIT_RETENTION_DAYS (never fewer than 730 days); the purge itself is "
            "audited and the chain still verifies afterwards. Beat runs it daily.")

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=20_000)

    def handle(self, *args, batch_size: int, **options):
        days = retention_days()
        result = audit_purge_expired(batch_size=batch_size)
        self.stdout.write(
            f"retention {days} days, cutoff {result.cutoff:%Y-%m-%d %H:%M:%S} UTC: removed "
            f"{result.events_removed} events and {result.log_lines_removed} log lines, "
            f"{len(result.checkpoints)} checkpoint(s)"
        )
