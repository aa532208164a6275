"""Print a new API token for a user, once; only its hash is stored.

The operator's tool on the server (the README's walk-through uses it). Its tokens carry
no second-factor check: the operator's word is nobody's second factor. Their owner
steps up through the token (``POST /api/v1/auth/step-up``; portalctl asks for the
code) before a Production decision. The ``token.issued`` event names the operator's
account on the server and the command (``issued_by: operator``).
"""

import getpass
import socket
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.trail import System
from core.errors import DomainError
from identity.models import TokenScope
from identity.services import api_token_issue
from identity.signin import normalize_username


def _operator() -> str:
    """Who ran the command, as the audit trail names them."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        who = "unknown"
    return f"manage.py issue_token, run by the operator {who} on {socket.gethostname()}"


class Command(BaseCommand):
    help = "Issue an API token for USER and print it once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="Token name (default: cli-<time>).")
        parser.add_argument("--days", type=int, default=90,
                            help="Days until it expires; 0 for no expiry.")
        parser.add_argument("--scopes", default=",".join(TokenScope.values),
                            help="Comma-separated scopes out of "
                                 f"{', '.join(TokenScope.values)} (default: all).")

    def handle(self, *args, username: str, name: str, days: int, scopes: str, **options):
        try:
            # "QA" names the account "qa": one spelling, as at sign-in.
            user = get_user_model().objects.get(username=normalize_username(username),
                                                is_active=True)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no active user named {username!r}") from None
        if days < 0:
            raise CommandError("--days must be 0 or more")
        name = name or f"cli-{timezone.now():%Y%m%d%H%M%S}"
        expires = timezone.now() + timedelta(days=days) if days else None
        try:
            _, raw = api_token_issue(actor=System(_operator()), user=user,
                                     name=name, expires_at=expires,
                                     scopes=[s.strip() for s in scopes.split(",") if s.strip()])
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(raw)
