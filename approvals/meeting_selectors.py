"""Reads of CAB meetings (docs/cab.md): who sees them, and an agenda with everything the
board weighs per item, read in bulk (a fixed number of queries per meeting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import QuerySet

from approvals import risk as risk_rules
from approvals.conflicts import conflicts_for
from approvals.models import CabAgendaItem, CabMeeting, CabSchedule, Gate, RiskAssessment
from approvals.risk_selectors import latest_risk_for_many
from catalog.permissions import environment_permissions

CAB_PERMISSION = "approve_cab"


def cab_environment_ids(user) -> set[int] | None:
    """The environments whose CAB meetings ``user`` sees: where they may decide the CAB
    gate or chair a schedule; None (all) for an administrator."""
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return None
    held = {pk for pk, codenames in environment_permissions(user).items()
            if CAB_PERMISSION in codenames}
    chaired = set(CabSchedule.objects.filter(chair=user).values_list("environment_id",
                                                                     flat=True))
    return held | chaired


def is_cab_member(user) -> bool:
    """Whether the CAB pages are for ``user`` (the nav link): an administrator, or someone
    who may decide the CAB gate somewhere (read once per request)."""
    if not getattr(user, "is_authenticated", False):
        return False
    return user.is_superuser or any(CAB_PERMISSION in codenames for codenames in
                                    environment_permissions(user).values())


def schedules_visible_to(user) -> QuerySet[CabSchedule]:
    ids = cab_environment_ids(user)
    found = CabSchedule.objects.select_related("environment", "chair").order_by("name")
    return found if ids is None else found.filter(environment_id__in=ids)


def meetings_visible_to(user) -> QuerySet[CabMeeting]:
    ids = cab_environment_ids(user)
    found = CabMeeting.objects.select_related("schedule__environment", "schedule__chair")
    return found if ids is None else found.filter(schedule__environment_id__in=ids)


@dataclass
class AgendaRow:
    item: CabAgendaItem
    risk: RiskAssessment | None
    conflicts: list = field(default_factory=list)
    cab_gate: Gate | None = None
    other_gates: list[Gate] = field(default_factory=list)

    @property
    def change(self):
        return self.item.change

    @property
    def band(self) -> str | None:
        return risk_rules.band(self.risk.score) if self.risk else None

    @property
    def migration_kinds(self) -> list[str]:
        plan = self.item.change.release.migration_plan or []
        return [str(step.get("kind", "")) for step in plan if isinstance(step, dict)]


def agenda_items(meetings) -> QuerySet[CabAgendaItem]:
    return (CabAgendaItem.objects.filter(meeting__in=meetings)
            .select_related("change__release__application", "change__environment",
                            "change__requested_by", "decided_by")
            .prefetch_related("change__gates__approvals")
            .order_by("meeting_id", "position", "id"))


def agenda_rows(meeting: CabMeeting) -> list[AgendaRow]:
    """The meeting's items with their risk, conflicts and gates, in a fixed number of
    queries however many items there are."""
    items = list(agenda_items([meeting.pk]))
    changes = [item.change for item in items]
    risk = latest_risk_for_many(changes)
    found = conflicts_for(changes)
    rows = []
    for item in items:
        gates = list(item.change.gates.all())
        rows.append(AgendaRow(
            item=item, risk=risk.get(item.change_id), conflicts=found.get(item.change_id, []),
            cab_gate=next((g for g in gates if g.role == "cab"), None),
            other_gates=[g for g in gates if g.role != "cab"]))
    return rows
