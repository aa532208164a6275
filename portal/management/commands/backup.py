"""Dump the portal database now (the same backup beat takes daily)."""

from django.core.management.base import BaseCommand, CommandError

from audit.trail import System
from core.errors import DomainError
from portal.backups import backup_create


class Command(BaseCommand):
    help = ("Back up the portal database with pg_dump into PORTAL_BACKUP_DIR "
            "(default var/backups), keeping the newest PORTAL_BACKUP_KEEP.")

    def add_arguments(self, parser):
        parser.add_argument("--dir", default=None, help="Write here instead of PORTAL_BACKUP_DIR.")
        parser.add_argument("--keep", type=int, default=None,
                            help="How many backups to keep (default PORTAL_BACKUP_KEEP).")

    def handle(self, *args, dir=None, keep=None, **options):
        try:
            path = backup_create(actor=System("manage.py backup"), directory=dir, keep=keep)
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(f"backup written: {path}")
