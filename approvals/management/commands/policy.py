"""The policy document as a file (docs/policies.md): export the active version, test a
file's examples, import a file as a proposed version."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from approvals import services
from approvals.policy import document as policy_document
from approvals.policy.evaluate import example_failures
from approvals.policy.rows import render_rows
from core.errors import DomainError


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc


class Command(BaseCommand):
    help = ("export: print the active policy document (or the policy rows as a first "
            "document, when there is no version yet). test FILE: check a document and run "
            "its examples; exit 1 if one fails. import FILE --user NAME: propose it as the "
            "next version (it binds once its gates approve it and its time comes).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Print the active document.")
        export.add_argument("--output", "-o", default="-", help="A file (default: stdout).")
        export.add_argument("--version", type=int, default=None,
                            help="An earlier version's number.")
        test = sub.add_parser("test", help="Run a document's examples.")
        test.add_argument("file", help="The document (- for stdin).")
        imp = sub.add_parser("import", help="Propose a document as the next version.")
        imp.add_argument("file", help="The document (- for stdin).")
        imp.add_argument("--user", required=True, help="Who proposes it (a username).")
        imp.add_argument("--effective-at", default=None,
                         help="When it binds once approved (ISO 8601 with a time zone); "
                              "default: as soon as it is approved.")
        imp.add_argument("--summary", default="", help="One line: what changes and why.")

    def handle(self, *args, action: str, **options):
        getattr(self, f"_{action}")(**options)

    def _export(self, *, output: str, version: int | None, **_):
        from approvals.models import PolicyVersion

        if version is not None:
            found = PolicyVersion.objects.filter(number=version).first()
            if found is None:
                raise CommandError(f"there is no policy version {version}")
            text = found.document
        else:
            active = services.active_version()
            text = active.document if active else render_rows()
            if active is None:
                self.stderr.write("no policy version yet: these are the policy rows "
                                  "written as a document")
        if output == "-":
            self.stdout.write(text, ending="")
        else:
            Path(output).write_text(text, encoding="utf-8")
            self.stderr.write(f"written to {output}")

    def _test(self, *, file: str, **_):
        try:
            document = policy_document.parse(_read(file))
        except policy_document.PolicyInvalid as exc:
            for problem in exc.problems:
                self.stderr.write(f"invalid: {problem}")
            raise CommandError("the policy document is not valid") from exc
        failures = example_failures(document)
        total = len(document.examples)
        for example in document.examples:
            failed = [f for f in failures if f.split(": ", 1)[0].endswith(
                f"({example['name']})")]
            self.stdout.write(f"{'FAIL' if failed else 'ok  '} {example['name']}")
            for line in failed:
                self.stdout.write(f"     {line.split(': ', 1)[1]}")
        self.stdout.write(f"{total - len({f.split(': ', 1)[0] for f in failures})} of "
                          f"{total} examples pass (digest {document.digest})")
        if failures:
            raise CommandError(f"{len(failures)} expectation(s) failed")
        if not total:
            self.stderr.write("the document ships no examples")

    def _import(self, *, file: str, user: str, effective_at: str | None, summary: str, **_):
        actor = get_user_model().objects.filter(username=user).first()
        if actor is None:
            raise CommandError(f"no user named {user!r}")
        when = None
        if effective_at:
            try:
                when = datetime.fromisoformat(effective_at.replace("Z", "+00:00"))
            except ValueError as exc:
                raise CommandError(f"--effective-at: {effective_at!r} is not ISO 8601") from exc
        try:
            version = services.policy_propose(actor=actor, text=_read(file),
                                              effective_at=when, summary=summary)
        except DomainError as exc:
            for line in (exc.fields or {}).get("document", []):
                self.stderr.write(f"  {line}")
            raise CommandError(f"{exc.code}: {exc.detail}") from exc
        gates = ", ".join(f"{role} × {count}" for role, count in version.gates.items())
        self.stdout.write(f"proposed policy v{version.number} (digest {version.digest}); "
                          f"it needs: {gates}")
