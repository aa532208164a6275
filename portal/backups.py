"""Backups of the portal's own database (pg_dump / pg_restore), daily by beat and on
demand by ``manage.py backup`` / ``restore``; the embedded server's client tools are
used when it runs (``portal.embedded``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from audit.trail import audit_record
from core.errors import Conflict, Invalid


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
