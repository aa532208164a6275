"""Who opened a change: the evidence the approval-quality report reads
(docs/cab.md).

A view is a fact about reading, not a state change of the change: it is not an audit
event (one a page load would flood the trail); the row itself is the record.
"""

from __future__ import annotations

from approvals.models import ChangeRequest, ChangeView
from core import clock


def change_view_record(*, change: ChangeRequest, user, kind: str = ChangeView.Kind.PAGE
                       ) -> None:
    """Record that ``user`` opened ``change`` now: one ``INSERT ... ON CONFLICT DO
    NOTHING``, so a second opening in the same minute costs the same one statement
    and adds no row (the unique constraint ``change_view_once_a_minute``)."""
    if not getattr(user, "is_authenticated", False):
        return
    at = clock.now()
    ChangeView.objects.bulk_create(
        [ChangeView(change_id=change.pk, user_id=user.pk, kind=kind, at=at,
                    minute=at.replace(second=0, microsecond=0))],
        ignore_conflicts=True)
