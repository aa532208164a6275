"""The quality of approvals (docs/cab.md): whether approvals are reviews or
rubber stamps, per approver and gate over a period.

Every figure is computed by PostgreSQL, in three statements whatever the number of
decisions: the figures per approver and gate (with each gate's totals as a grouping
set), each gate's concentration, and the pairs who approve each other's changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import connection

from approvals.models import Approval, ChangeRequest, ChangeView, Gate, GateRole

# An approval given this soon after its gate was requested is too fast to be a review.
FAST_SECONDS = 60
# A row is flagged when at least this share of its approvals were fast or unread.
FLAG_SHARE = 0.5

# The SOP sections each figure serves (SOP-DEV-002; the section numbers are quoted on
# the page, in the CSV's documentation and in docs/cab.md).
SOP = {
    "decisions": "13.1",
    "time_to_decision": "3.3, 5.2",
    "fast": "3.1, 3.3",
    "unopened": "3.3, 13.1",
    "pairs": "3.3, 10.2",
    "concentration": "3.3, 10.1",
}


@dataclass
class Figures:
    """Decisions of one approver on one gate role (or, with no approver, of the gate)."""

    role: str
    decisions: int
    approvals: int
    rejections: int
    median_seconds: float | None
    p90_seconds: float | None
    fast: int
    unopened: int
    fast_or_unopened: int
    approver_id: int | None = None
    approver: str = ""

    @property
    def role_name(self) -> str:
        return GateRole(self.role).label if self.role in GateRole.values else self.role

    @property
    def median_text(self) -> str:
        return duration_text(self.median_seconds)

    @property
    def p90_text(self) -> str:
        return duration_text(self.p90_seconds)

    @property
    def flagged(self) -> bool:
        """Most approvals came too fast to be read, or without opening the change."""
        return bool(self.approvals) and self.fast_or_unopened >= FLAG_SHARE * self.approvals


@dataclass
class Concentration:
    """How one gate's decisions spread over its approvers."""

    role: str
    decisions: int
    approvers: int
    top_approver: str
    top_share: float
    hhi: float

    @property
    def top_percent(self) -> float:
        return self.top_share * 100

    @property
    def role_name(self) -> str:
        return GateRole(self.role).label if self.role in GateRole.values else self.role


@dataclass
class Pair:
    """Two people each of whom approved changes the other requested."""

    first: str
    second: str
    first_approved_second: int
    second_approved_first: int

    @property
    def total(self) -> int:
        return self.first_approved_second + self.second_approved_first

    def seen_from(self, username: str) -> tuple[str, int, int]:
        """(the other person, how many of theirs ``username`` approved, and the reverse)."""
        if username == self.first:
            return self.second, self.first_approved_second, self.second_approved_first
        return self.first, self.second_approved_first, self.first_approved_second


@dataclass
class ApprovalQuality:
    since: datetime
    until: datetime
    rows: list[Figures] = field(default_factory=list)
    gates: list[Figures] = field(default_factory=list)
    concentration: dict[str, Concentration] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)

    def partners(self, username: str) -> list[Pair]:
        return [p for p in self.pairs if username in (p.first, p.second)]


def _tables() -> dict[str, str]:
    return {"approval": Approval._meta.db_table, "gate": Gate._meta.db_table,
            "change": ChangeRequest._meta.db_table, "view": ChangeView._meta.db_table,
            "user": get_user_model()._meta.db_table}


# One row per decision in the period with when its gate was requested: the change's
# submission, or the latest withdrawal of another approval of the same gate before the
# decision (an edit, or the approver's own withdrawal, reopened it); and whether the
# approver had opened the change (its page or its diff) before deciding.
_DECISIONS = """
WITH d AS (
  SELECT a.id, a.approver_id, g.role, a.decision, a.decided_at, a.change_id,
         c.requested_by_id,
         EXTRACT(EPOCH FROM a.decided_at - GREATEST(
           COALESCE(c.submitted_at, c.created_at),
           (SELECT max(w.withdrawn_at) FROM {approval} w
             WHERE w.gate_id = a.gate_id AND w.id <> a.id
               AND w.withdrawn_at <= a.decided_at))) AS wait,
         EXISTS (SELECT 1 FROM {view} v
                  WHERE v.change_id = a.change_id AND v.user_id = a.approver_id
                    AND v.at <= a.decided_at) AS opened
    FROM {approval} a
    JOIN {gate} g ON g.id = a.gate_id
    JOIN {change} c ON c.id = a.change_id
   WHERE a.decided_at >= %(since)s AND a.decided_at < %(until)s
)
"""

_FIGURES = _DECISIONS + """
SELECT d.role, d.approver_id, max(u.username), GROUPING(d.approver_id),
       count(*),
       count(*) FILTER (WHERE d.decision = 'approved'),
       count(*) FILTER (WHERE d.decision = 'rejected'),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d.wait),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY d.wait),
       count(*) FILTER (WHERE d.decision = 'approved' AND d.wait <= {fast}),
       count(*) FILTER (WHERE d.decision = 'approved' AND NOT d.opened),
       count(*) FILTER (WHERE d.decision = 'approved' AND (d.wait <= {fast} OR NOT d.opened))
  FROM d JOIN {user} u ON u.id = d.approver_id
 GROUP BY GROUPING SETS ((d.role, d.approver_id), (d.role))
 ORDER BY d.role, GROUPING(d.approver_id) DESC, count(*) DESC, max(u.username)
"""

# Concentration per gate: the top approver's share of its decisions and the
# Herfindahl-Hirschman index, the sum of the squared shares (1 = one person decides
# everything; 1/n = n people decide equally).
_CONCENTRATION = _DECISIONS + """
, per AS (
  SELECT d.role, u.username, count(*) AS n
    FROM d JOIN {user} u ON u.id = d.approver_id
   GROUP BY d.role, u.username
)
SELECT role, sum(n)::bigint, count(*),
       (array_agg(username ORDER BY n DESC, username))[1],
       max(n)::float8 / sum(n), sum(n * n)::float8 / (sum(n) * sum(n))
  FROM per GROUP BY role ORDER BY role
"""

# A approved changes B requested, and B approved changes A requested, in the period.
_PAIRS = """
WITH e AS (
  SELECT a.approver_id AS x, c.requested_by_id AS y, count(*) AS n
    FROM {approval} a JOIN {change} c ON c.id = a.change_id
   WHERE a.decision = 'approved' AND a.approver_id <> c.requested_by_id
     AND a.decided_at >= %(since)s AND a.decided_at < %(until)s
   GROUP BY a.approver_id, c.requested_by_id
)
SELECT ux.username, uy.username, e1.n, e2.n
  FROM e e1 JOIN e e2 ON e2.x = e1.y AND e2.y = e1.x
  JOIN {user} ux ON ux.id = e1.x JOIN {user} uy ON uy.id = e1.y
 WHERE ux.username < uy.username
 ORDER BY e1.n + e2.n DESC, ux.username, uy.username
"""


def approval_quality(*, since: datetime, until: datetime) -> ApprovalQuality:
    """The figures of decisions made in ``[since, until)``, in three queries."""
    names = {**_tables(), "fast": FAST_SECONDS}
    params = {"since": since, "until": until}
    result = ApprovalQuality(since=since, until=until)
    with connection.cursor() as cursor:
        cursor.execute(_FIGURES.format(**names), params)
        for (role, approver_id, username, whole_gate, decisions, approvals, rejections,
             median, p90, fast, unopened, either) in cursor.fetchall():
            figures = Figures(role=role, decisions=decisions, approvals=approvals,
                              rejections=rejections, median_seconds=median,
                              p90_seconds=p90, fast=fast, unopened=unopened,
                              fast_or_unopened=either)
            if whole_gate:
                result.gates.append(figures)
            else:
                figures.approver_id, figures.approver = approver_id, username
                result.rows.append(figures)
        cursor.execute(_CONCENTRATION.format(**names), params)
        for role, decisions, approvers, top, top_share, hhi in cursor.fetchall():
            result.concentration[role] = Concentration(
                role=role, decisions=decisions, approvers=approvers, top_approver=top,
                top_share=top_share, hhi=hhi)
        cursor.execute(_PAIRS.format(**names), params)
        result.pairs = [Pair(*row) for row in cursor.fetchall()]
    return result


def duration_text(seconds: float | None) -> str:
    """A wait as a person reads it: 45 s, 12 min, 3.5 h, 2.1 d."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
