"""The audit trail's exports, each line built by PostgreSQL and streamed by ``COPY``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import QuerySet

# ---------------------------------------------------------------------------
# Exports, streamed by PostgreSQL
#
# Each export line is built by PostgreSQL inside ``COPY (SELECT ...) TO STDOUT``
# over the very query the page filters with, so Python only moves bytes: no row
# objects, no per-row encoding, and memory stays at one batch whatever the size.
# The SQL below reproduces, value for value, what the Python cell functions of the
# views write (``auditor_cell`` and ``api_cell`` of ``reporting.exports``,
# DjangoJSONEncoder for JSON Lines). A ``before``/``after`` value the SQL cannot
# render the same way (nested objects, fractions, non-ASCII, a bare scalar) comes
# back as a ``#``-prefixed JSON array of the raw row, and the view's own Python
# renders that line: identical output, slower only for those rare rows.

EXPORT_BATCH_BYTES = 1 << 16
FALLBACK_MARK = 35  # "#": an export line never starts with it (lines start with the id)


def _sql_iso(column: str, *, sep: str = "T", fraction: str = "US", zulu: bool = False) -> str:
    """``datetime.isoformat()`` of a timestamptz in UTC (DjangoJSONEncoder style when
    ``zulu``: milliseconds and "Z"). The fraction is left out when the microseconds
    are zero, as Python does (milliseconds are cut from them, not rounded)."""
    at = f"({column} AT TIME ZONE 'UTC')"
    return (f"(CASE WHEN date_trunc('second', {column}) = {column}"
            f" THEN to_char({at}, 'YYYY-MM-DD\"{sep}\"HH24:MI:SS')"
            f" ELSE to_char({at}, 'YYYY-MM-DD\"{sep}\"HH24:MI:SS.{fraction}') END"
            f" || '{'Z' if zulu else '+00:00'}')")


def _sql_ip(column: str) -> str:
    """An inet as Django reads it (the address alone for a single host)."""
    return (f"(CASE WHEN masklen({column}) = CASE family({column}) WHEN 4 THEN 32 ELSE 128 END"
            f" THEN host({column}) ELSE {column}::text END)")


def _sql_csv_cell(expr: str) -> str:
    """One CSV cell of a text value: a leading formula character quoted with ``'``
    (as the views' cell functions do), then csv.writer's minimal quoting."""
    text = (f"(CASE WHEN left({expr}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r')"
            f" THEN '''' || {expr} ELSE {expr} END)")
    return (f"(CASE WHEN {text} ~ '[,\"\\r\\n]' THEN '\"' || replace({text}, '\"', '\"\"')"
            f" || '\"' ELSE {text} END)")


def _sql_flat(text: str, chars: str) -> str:
    """Whether ``text`` (a jsonb's text) is an object whose keys and string values use
    only ``chars`` (a regular expression class body) and whose other values are
    integers, booleans or null: what the fast paths below can write as it stands."""
    string = f'"[{chars}]*"'
    pair = f"{string}: ({string}|-?[0-9]+|true|false|null)"
    return f"({text} ~ '^\\{{({pair}(, {pair})*)?\\}}$')"


# Printable ASCII without " and \ (sorted JSON).
_JSON_PLAIN = r" !#-\[\]-~"


def _sql_quoted(text: str) -> str:
    """A CSV cell that csv.writer would quote (it holds a quote or a comma)."""
    return f"""('"' || replace({text}, '"', '""') || '"')"""


def _sql_json_sorted_cell(column: str) -> str:
    """The CSV cell of ``json.dumps(value, sort_keys=True)`` (ASCII) of a flat object
    whose values are strings, integers, booleans or null; '' for none; NULL for
    anything else (the row is then rendered by the view's Python).

    When the keys already come in code point order (always, with one key) and the
    strings need no escaping, the jsonb's own text is that JSON; otherwise the keys
    are sorted one by one. Every expression here is written once per row: the row's
    line is built in a single pass."""
    text = f"{column}::text"
    simple = ("(jsonb_typeof(v) IN ('string', 'boolean', 'null')"
              " OR (jsonb_typeof(v) = 'number' AND v::text ~ '^-?[0-9]+$'))")
    in_order = (f"(strpos({text}, ', \"') = 0 OR (SELECT array_agg(k ORDER BY n) = array_agg("
                f"k ORDER BY k COLLATE \"C\") FROM jsonb_object_keys({column})"
                " WITH ORDINALITY AS o(k, n)))")
    sorted_ = ("'{' || string_agg(to_json(k)::text || ': ' || v::text, ', '"
               " ORDER BY k COLLATE \"C\") || '}'")
    return (f"(CASE WHEN {column} IS NULL OR jsonb_typeof({column}) = 'null' THEN ''"
            f" WHEN {column} = '{{}}'::jsonb THEN '{{}}'"
            f" WHEN {_sql_flat(text, _JSON_PLAIN)} AND {in_order} THEN {_sql_quoted(text)}"
            f" WHEN jsonb_typeof({column}) = 'object' AND octet_length({text}) = length({text})"
            f" THEN (SELECT CASE WHEN bool_and({simple}) THEN {_sql_quoted(sorted_)} END"
            f" FROM jsonb_each({column}) AS j(k, v)) END)")


def _sql_fallback(fields: list[str]) -> str:
    """The raw row as a JSON array, for the view's Python to render."""
    values = []
    for name in fields:
        column = f'e."{name}"'
        if name == "occurred_at":
            values.append(_sql_iso(column))
        elif name == "ip":
            values.append(_sql_ip(column))
        else:
            values.append(column)
    return f"'#' || json_build_array({', '.join(values)})::text"


def export_csv_line_sql(fields: list[str], *, style: str) -> tuple[str, str]:
    """SQL for one CSV line of an event (alias ``e``) with the cells of ``fields``.

    ``style`` "auditor" writes times as ``isoformat()`` (``auditor_cell``), "api" as
    ``str()`` (``api_cell``); both write JSON values as sorted JSON. A row whose JSON
    values the SQL cannot render becomes a fallback line instead.
    """
    cells, texts = [], []
    for name in fields:
        column = f'e."{name}"'
        if name == "id":
            cells.append(f"{column}::text")
        elif name == "occurred_at":
            cells.append(_sql_iso(column, sep="T" if style == "auditor" else " "))
        elif name in ("before", "after"):
            cells.append(_sql_json_sorted_cell(column))
        else:
            value = f"coalesce({_sql_ip(column)}, '')" if name == "ip" else column
            texts.append(value)
            cells.append(f"\x00{len(texts) - 1}\x00")
    line = " || ',' || ".join(cells)
    # Most rows hold no cell that needs quoting or a formula mark: one regular expression
    # over all their text cells (each after a \x1f) finds those that do, and only they
    # take the cell by cell path.
    check = " || ".join(f"E'\\x1f' || {value}" for value in texts)
    fast, slow = line, line
    for i, value in enumerate(texts):
        fast = fast.replace(f"\x00{i}\x00", value)
        slow = slow.replace(f"\x00{i}\x00", _sql_csv_cell(value))
    if texts:
        line = f"CASE WHEN ({check}) ~ '[,\"\\r\\n]|\\x1f[-=+@\\t]' THEN {slow} ELSE {fast} END"
    # A JSON value the SQL cannot render is NULL, and so is the line: the row then goes
    # to the view's Python.
    return f"coalesce({line}, {_sql_fallback(fields)})", ""


def export_jsonl_line_sql(fields: list[str]) -> tuple[str, str]:
    """SQL for one JSON Lines line of an event (alias ``e``): the same keys, order and
    values as ``json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False)``, except
    ``occurred_at``, written whole (``isoformat()``, microseconds included) as the hash
    covers it: every exported event can be hashed again elsewhere."""
    parts = []
    for name in fields:
        column = f'e."{name}"'
        if name == "id":
            value = f"{column}::text"
        elif name == "occurred_at":
            value = f"'\"' || {_sql_iso(column)} || '\"'"
        elif name == "ip":
            value = f"coalesce(to_json({_sql_ip(column)})::text, 'null')"
        elif name in ("before", "after"):
            value = f"coalesce({column}::text, 'null')"
        else:
            value = f"coalesce(to_json({column})::text, 'null')"
        parts.append(f"'{', ' if parts else '{'}\"{name}\": ' || {value}")
    return " || ".join(parts) + " || '}'", ""


def export_stream(qs: QuerySet, fields: list[str], line: tuple[str, str], *,
                  terminator: bytes, header: bytes = b"",
                  fallback: Callable[[dict], bytes] | None = None) -> Iterator[bytes]:
    """Stream the export lines of ``qs`` (in its order), built by PostgreSQL with the
    ``line`` SQL, in batches of about 64 KiB.

    The query is the queryset's own SQL, its parameters bound by psycopg's client-side
    quoting (``mogrify``), since ``COPY`` takes no server-side parameters. It runs on
    the request's connection, in its own savepoint or transaction: a client that
    hangs up mid-stream cancels the ``COPY`` and leaves the connection usable.
    """
    empty = qs.query.is_empty()
    if not empty:
        try:
            inner, params = qs.values_list(*fields).query.sql_with_params()
        except EmptyResultSet:
            empty = True
    if header:
        yield header
    if empty:
        return
    expression, join = line
    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor
        query = psycopg.ClientCursor(raw.connection).mogrify(inner, params)
        # Each line comes as one bytea cell of a binary COPY, its UTF-8 bytes as they
        # are written out: psycopg reads the frames, nothing is decoded here.
        statement = (f"COPY (SELECT convert_to({expression}, 'UTF8') FROM ({query}) AS e"
                     f" {join}) TO STDOUT WITH (FORMAT binary)")
        with raw.copy(statement) as copy:
            copy.set_types(["bytea"])
            batch: list = []
            size = 0
            for (data,) in copy.rows():
                size += len(data)
                if data[0] == FALLBACK_MARK:
                    data = fallback(_fallback_row(fields, data[1:]))
                batch.append(data)
                batch.append(terminator)
                if size >= EXPORT_BATCH_BYTES:
                    yield b"".join(batch)
                    batch, size = [], 0
            if batch:
                yield b"".join(batch)


def _fallback_row(fields: list[str], data) -> dict:
    """The raw row of a fallback line, with the Python types Django would read."""
    row = dict(zip(fields, json.loads(bytes(data)), strict=True))
    if "occurred_at" in row:
        row["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    return row
