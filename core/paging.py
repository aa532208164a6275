"""Newest-first pages keyed by id, for every list that pages through history (the audit
trail, the auditor's deployment history, changes, deployments): ``?before=<id>``
continues below a page's last row, so a page deep in the history costs what the first
does, and the pager keeps the page's other parameters (``templates/_keyset_pager.html``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.models import QuerySet

# A page position: an id (ASCII digits only, within PostgreSQL's bigint); anything else
# is ignored and the first page is shown.
_POSITION = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class KeysetPage:
    rows: list
    next_before: int | None  # pass as ?before= for the next (older) page
    newest: bool  # this is the first page


def position(request) -> int | None:
    """The ``?before=`` of ``request``, or None for the first page."""
    raw = request.GET.get("before", "")
    return int(raw) if _POSITION.fullmatch(raw) else None


def query_without_position(request) -> str:
    """The request's query string without ``before``, for the pager's links."""
    params = request.GET.copy()
    params.pop("before", None)
    return params.urlencode()


def keyset_page(qs: QuerySet, before: int | None, size: int) -> KeysetPage:
    """One page of ``qs`` newest first, ``size`` rows older than id ``before``."""
    if before is not None:
        qs = qs.filter(id__lt=before)
    rows = list(qs.order_by("-id")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return KeysetPage(rows=rows, next_before=rows[-1].id if more else None,
                      newest=before is None)
