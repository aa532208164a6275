"""Newest-first pages keyed by id for the pages' lists (changes, deployments): a page
deep in the history costs what the first does, and a page link keeps the filters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils.http import urlencode

# A page position: an id (digits only, within PostgreSQL's bigint); anything else is
# ignored and the first page is shown.
_POSITION = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class IdPage:
    rows: list
    older: str | None  # the query string of the next, older page; None on the last
    first: str  # the query string of the first page, filters kept
    continued: bool  # this is not the first page


def newest_first(queryset: QuerySet, request, *, size: int, filters: dict[str, str]) -> IdPage:
    """``size`` rows of ``queryset`` by descending id, below ``?before=<id>`` if given."""
    before = request.GET.get("before", "")
    continued = bool(_POSITION.fullmatch(before))
    if continued:
        queryset = queryset.filter(pk__lt=int(before))
    rows = list(queryset.order_by("-id")[:size + 1])
    query = urlencode({k: v for k, v in filters.items() if v})
    older = None
    if len(rows) > size:
        rows = rows[:size]
        older = "?" + "&".join(p for p in (query, f"before={rows[-1].pk}") if p)
    return IdPage(rows=rows, older=older, first=f"?{query}", continued=continued)
