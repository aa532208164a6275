"""Restore the portal database from a backup file (stop `make run` first)."""

from django.core.management.base import BaseCommand, CommandError

from audit.trail import System
from core.errors import DomainError
from portal.backups import backup_restore


class Command(BaseCommand):
    help = ("Restore the portal database from FILE (made by `manage.py backup`). Everything "
            "in the database is replaced; stop the portal first.")

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--yes", action="store_true",
                            help="Do not ask for confirmation.")

    def handle(self, *args, file: str, yes: bool, **options):
        if not yes:
            answer = input(f"Replace the portal database with {file}? Type 'restore': ")
            if answer.strip() != "restore":
                raise CommandError("not restored")
        try:
            backup_restore(actor=System("manage.py restore"), path=file)
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(f"restored from {file}; run `manage.py verify_audit` to check the trail")
