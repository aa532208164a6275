"""The audit trail's exports: one CSV writer, for the auditor's download and the API.

PostgreSQL builds each line (``audit_selectors.export_stream``); the cell functions
here remain the definition of what a cell holds, and write the rows the SQL cannot.
The two CSV styles differ only in how they write times, kept as they were published:

- ``auditor`` (``/audit/export.csv``): times as ``isoformat()`` (``auditor_cell``);
- ``api`` (``/api/v1/audit-events/?format=csv``): ``str()`` of a time (``api_cell``).

Both write a structured value (an object or a list) as JSON with sorted keys, so a
reader parses it back, and a cell a spreadsheet would run as a formula as text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder

from reporting import audit_selectors as sel

EXPORT_FIELDS = ["id", "occurred_at", "actor_name", "actor_kind", "action", "object_type",
                 "object_id", "object_repr", "environment", "before", "after", "reason",
                 "request_id", "ip", "user_agent", "prev_hash", "hash"]
# JSON Lines carries every field the hash covers, so each line can be hashed again.
JSONL_FIELDS = ["id", "occurred_at", "actor_id", *EXPORT_FIELDS[2:]]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _as_text(text: str) -> str:
    return "'" + text if text[:1] in FORMULA_STARTS else text


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, cls=DjangoJSONEncoder)


def auditor_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = _json(value)
    # The JSON Lines export keeps every value exactly as stored, for verification.
    return _as_text(value.isoformat() if hasattr(value, "isoformat") else str(value))


def api_cell(value) -> str:
    if isinstance(value, (dict, list)):
        value = _json(value)
    return _as_text("" if value is None else str(value))


CELLS = {"auditor": auditor_cell, "api": api_cell}


class _Echo:
    def write(self, value):
        return value


_writer = csv.writer(_Echo())


def _line(cells: list[str]) -> bytes:
    """One CSV line as csv.writer writes it, without its line ending."""
    return _writer.writerow(cells)[:-2].encode()


ACCESS_FIELDS = ["account", "status", "groups", "permissions", "auditor", "active_api_tokens",
                 "sign_ins", "failed_sign_ins", "last_sign_in", "must_have_second_factor",
                 "second_factors", "factors_enrolled", "factor_last_used"]


def access_csv(rows, *, days: int) -> Iterator[bytes]:
    """The access review (``audit_selectors.access_review``) as CSV, one account a line:
    permissions as ``environment: codename, ...`` joined by ``; ``, factors by kind."""
    yield _line(ACCESS_FIELDS) + b"\r\n"
    for row in rows:
        user = row.user
        status = ("inactive" if not user.is_active else
                  "administrator" if user.is_superuser else "active")
        yield _line([auditor_cell(value) for value in (
            user.get_username(), status, ", ".join(row.groups),
            "; ".join(f"{env}: {', '.join(perms)}"
                      for env, perms in row.environment_permissions.items()),
            "yes" if row.auditor else "no", row.active_tokens, row.logins,
            row.failed_logins, row.last_seen,
            "yes" if row.must_have_second_factor else "no",
            ", ".join(f.kind for f in row.factors),
            ", ".join(f"{f.kind} {f.enrolled_at.isoformat()}" for f in row.factors
                      if f.enrolled_at),
            row.factor_last_used)]) + b"\r\n"


def audit_csv(events, *, style: str, fields: list[str] = EXPORT_FIELDS) -> Iterator[bytes]:
    """The CSV of ``events`` in their order, header first, in ``style``'s cells."""
    cell = CELLS[style]
    return sel.export_stream(
        events, fields, sel.export_csv_line_sql(fields, style=style),
        header=_line(fields) + b"\r\n", terminator=b"\r\n",
        fallback=lambda row: _line([cell(row[name]) for name in fields]))


def audit_jsonl(events, *, fields: list[str] = JSONL_FIELDS) -> Iterator[bytes]:
    return sel.export_stream(events, fields, sel.export_jsonl_line_sql(fields),
                             terminator=b"\n")


# The quality of approvals (docs/cab.md): the page's figures, one row per
# approver and gate; the gate's concentration and the approver's reciprocal partners
# repeated on each of its rows.
QUALITY_FIELDS = ["from", "to", "gate", "approver", "decisions", "approvals", "rejections",
                  "median_seconds_to_decision", "p90_seconds_to_decision",
                  "approved_within_60s", "approved_without_opening", "flagged",
                  "share_of_gate_decisions", "gate_decisions", "gate_top_approver",
                  "gate_top_share", "gate_herfindahl", "approves_each_other_with"]


def approval_quality_csv(figures) -> Iterator[bytes]:
    yield _line(QUALITY_FIELDS) + b"\r\n"
    first = figures.since.date().isoformat()
    last = (figures.until - timedelta(days=1)).date().isoformat()
    for row in figures.rows:
        gate = figures.concentration.get(row.role)
        # "bob: 3/2": this approver approved 3 changes bob requested, bob approved 2 of theirs.
        partners = "; ".join(f"{other}: {mine}/{theirs}" for other, mine, theirs in
                             (p.seen_from(row.approver) for p in figures.partners(row.approver)))
        yield _line([auditor_cell(value) for value in (
            first, last, row.role, row.approver, row.decisions, row.approvals,
            row.rejections, _round(row.median_seconds), _round(row.p90_seconds), row.fast,
            row.unopened, "yes" if row.flagged else "no",
            _round(row.decisions / gate.decisions, 4) if gate else "",
            gate.decisions if gate else "", gate.top_approver if gate else "",
            _round(gate.top_share, 4) if gate else "", _round(gate.hhi, 4) if gate else "",
            partners)]) + b"\r\n"


def _round(value, digits: int = 1):
    return None if value is None else round(value, digits)
