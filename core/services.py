"""State changes of the shared core: API tokens."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from datetime import datetime
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import audit_record
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from core.models import ApiToken, TokenScope, hash_token


def _clean_scopes(scopes) -> list[str]:
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in TokenScope.values]
    if unknown or not wanted:
        raise Invalid(
            f"a token needs one or more of the scopes {', '.join(TokenScope.values)}",
            fields={"scopes": [f"Choose from {', '.join(TokenScope.values)}."]})
    # Keep the order the scopes are listed in, for display.
    return [s for s in TokenScope.values if s in wanted]


def api_token_issue(*, actor, user, name: str, expires_at: datetime | None = None,
                    scopes: list[str] | None = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its clear value, which is shown once and never stored.

    ``scopes`` limit what the token may do even when its user may do more
    (default: every scope).
    """
    scopes = _clean_scopes(TokenScope.values if scopes is None else scopes)
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid("a token needs a name of 1 to 100 characters",
                      fields={"name": ["Name the token, e.g. after the pipeline using it."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("the expiry must be in the future",
                      fields={"expires_at": ["Choose a time in the future."]})
    raw = "cap_" + secrets.token_urlsafe(32)
    with transaction.atomic():
        if ApiToken.objects.filter(user=user, name=name).exists():
            raise Conflict(f"{user.get_username()} already has a token named {name!r}",
                           code="token_exists")
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(user=user, name=name, prefix=raw[:8],
                                                token_hash=hash_token(raw),
                                                expires_at=expires_at, scopes=scopes)
        except IntegrityError:  # the same name issued concurrently
            raise Conflict(f"{user.get_username()} already has a token named {name!r}",
                           code="token_exists") from None
        audit_record(actor=actor, action="token.issued", obj=token,
                     after={"user": user.get_username(), "name": name,
                            "expires_at": expires_at, "scopes": scopes})
    return token, raw


def api_token_revoke(*, actor, token: ApiToken) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update(of=("self",)).select_related("user").get(
            pk=token.pk)
        if (getattr(actor, "pk", None) and actor.pk != token.user_id
                and not getattr(actor, "is_superuser", False)):
            raise Refused("only the token's owner or an administrator revokes it",
                          code="not_permitted")
        if token.revoked_at:
            raise InvalidTransition("the token is already revoked")
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="token.revoked", obj=token,
                     after={"user": token.user.get_username(), "name": token.name})
    return token


# --- backups of the portal's own database ------------------------------------


def _pg_tool(name: str) -> str:
    """The PostgreSQL client tool: the embedded server's own, else the one on PATH."""
    import shutil

    from portal import embedded

    try:
        candidate = embedded.Postgres(embedded.var_dir(), embedded.pg_port()).bin(name)
        if os.path.exists(candidate):
            return candidate
    except embedded.ServiceError:
        pass
    found = shutil.which(name)
    if not found:
        raise Conflict(f"{name} is not installed; install the PostgreSQL client tools",
                       code="pg_tools_missing")
    return found


def database_dsn(settings_dict: dict | None = None) -> str:
    """A libpq connection string for the portal's database (or ``settings_dict``'s)."""
    from django.db import connection

    db = settings_dict or connection.settings_dict
    parts = {"host": db.get("HOST") or "127.0.0.1", "port": db.get("PORT") or 5432,
             "user": db.get("USER") or "", "password": db.get("PASSWORD") or "",
             "dbname": db.get("NAME")}
    return " ".join(f"{k}='{str(v)}'" for k, v in parts.items() if v != "")


def _run_tool(args: list[str], what: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        # libpq never prints the password; the first line names the problem.
        raise Conflict(f"{what} failed: {lines[0] if lines else result.returncode}",
                       code="backup_failed")


def backup_create(*, actor, directory: Path | None = None, keep: int | None = None) -> Path:
    """Dump the portal database (pg_dump custom format) and keep the newest ``keep``.

    Written to a temporary name and renamed, so a half-written dump never looks like
    a backup. Recorded as the audit event ``portal.backup_created`` with its size
    and SHA-256; the files removed by the retention are named in the same event.
    """
    from django.conf import settings

    directory = Path(directory or settings.PORTAL_BACKUP_DIR)
    keep = settings.PORTAL_BACKUP_KEEP if keep is None else keep
    if keep < 1:
        raise Invalid("keep at least one backup", fields={"keep": ["At least 1."]})
    directory.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S-%f")
    final = directory / f"portal-{stamp}.dump"
    partial = directory / f".{final.name}.partial"
    try:
        _run_tool([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                   f"--file={partial}", f"--dbname={database_dsn()}"], "pg_dump")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    existing = sorted(directory.glob("portal-*.dump"))
    removed = [p.name for p in existing[:-keep]]
    for name in removed:
        (directory / name).unlink(missing_ok=True)
    with transaction.atomic():
        audit_record(actor=actor, action="portal.backup_created", object_type="backup",
                     object_id=final.name, object_repr=final.name,
                     after={"file": final.name, "bytes": final.stat().st_size,
                            "sha256": digest, "kept": min(len(existing), keep),
                            "removed": removed})
    return final


def backup_restore(*, actor, path: Path, settings_dict: dict | None = None) -> None:
    """Restore a dump made by ``backup_create`` into the portal database (or another).

    Existing objects are dropped first (pg_restore --clean). Restoring into the
    portal's own database is recorded afterwards as ``portal.backup_restored`` in
    the restored audit trail; a restore drill into another database writes nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise Invalid(f"no backup file at {path}", fields={"file": ["Not found."]})
    _run_tool([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
               "--no-privileges", "--exit-on-error", "--single-transaction",
               f"--dbname={database_dsn(settings_dict)}", str(path)], "pg_restore")
    if settings_dict is None:
        with transaction.atomic():
            audit_record(actor=actor, action="portal.backup_restored", object_type="backup",
                         object_id=path.name, object_repr=path.name,
                         after={"file": path.name,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
