"""Request bodies in JSON: a parser with a nesting limit that refuses NUL characters.

Imports nothing of DRF's views, so ``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]`` can
name it."""

from __future__ import annotations

import json
import re

from rest_framework import exceptions, parsers
from rest_framework.utils import json as drf_json

# JSON nested deeper than this is refused before it is decoded: no request the API
# takes comes near it, and deeper documents would exhaust the recursion of the
# decoder, the validators and the idempotency fingerprint (a 500).
MAX_JSON_DEPTH = 32

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON document ``text`` nests arrays and objects deeper than ``limit``.

    Counted on the raw text, brackets inside strings skipped, without recursion, and it
    stops at the first bracket past the limit: a deep document costs no more than a
    shallow one of the same size."""
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def has_nul(value) -> bool:
    """Whether any string in ``value`` (keys included) holds NUL; no recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


class _Refused(ValueError):
    """A well-formed JSON document the API does not take."""


def parse_json_body(raw: bytes | str, *, strict: bool = True):
    """Decode a JSON request body, refusing documents nested deeper than
    ``MAX_JSON_DEPTH`` and strings holding NUL (which PostgreSQL text cannot store).
    Raises ``ValueError`` with a sentence fit for the client."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if json_too_deep(text):
        raise _Refused(f"JSON may nest arrays and objects at most {MAX_JSON_DEPTH} deep.")
    data = json.loads(text, parse_constant=drf_json.strict_constant if strict else None)
    if has_nul(data):
        raise _Refused("JSON strings may not contain NUL (\\u0000) characters.")
    return data


class JSONParser(parsers.JSONParser):
    """JSON with a nesting limit, refusing NUL characters (``parse_json_body``)."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = parsers.get_encoding(parser_context or {})
        try:
            return parse_json_body(stream.read().decode(encoding), strict=self.strict)
        except _Refused as exc:
            raise exceptions.ParseError(str(exc)) from None
        except ValueError as exc:  # UnicodeDecodeError and json's errors included
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
