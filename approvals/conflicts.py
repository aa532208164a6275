"""Conflicts between changes, as CAB sees them (docs/cab.md).

A change occupies a window of time; two changes conflict when their windows overlap
and they touch the same thing: the same application in one environment, applications
that depend on one another there, the same targets, or the same on-call engineer. A
freeze overlapping a change's window is a conflict too. The rules (``detect``) are
pure, over facts read in bulk (``conflicts_for``: five queries for any number of
changes). A conflict blocks a change only when its policy says so (``as_blockers``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from approvals import schedule
from approvals.models import ApprovalPolicy, ChangeRequest, Delegation, Freeze
from audit.permissions import is_auditor
from catalog.models import Application, Target
from catalog.permissions import environment_permissions
from core import clock

# How long a deployment is expected to take: no policy or environment says so yet.
EXPECTED_DURATION = timedelta(hours=1)
# An open change without a time may start any moment until then: changes do not lapse,
# so this is the horizon conflicts look ahead for it.
OPEN_HORIZON = timedelta(days=7)

SAME_APPLICATION, DEPENDENCY, SAME_TARGETS, FREEZE, ON_CALL = (
    "same_application", "dependency", "same_targets", "freeze", "on_call")
KINDS = (SAME_APPLICATION, DEPENDENCY, SAME_TARGETS, FREEZE, ON_CALL)

# A change in these states may still run, so it occupies its window.
ACTIVE = {*ChangeRequest.OPEN, ChangeRequest.Status.DEPLOYING}


def _moment(at: datetime) -> str:
    local = timezone.localtime(at)
    return f"{local:%a} {local.day} {local:%b %H:%M}"


@dataclass(frozen=True)
class Window:
    """[start, end) a change occupies; ``how``: scheduled, unscheduled or deploying."""

    start: datetime
    end: datetime
    how: str

    def overlaps(self, other: Window) -> bool:
        return self.start < other.end and other.start < self.end

    def describe(self) -> str:
        if self.how == "deploying":
            return "deploying now"
        if self.how == "unscheduled":
            return f"not scheduled: any time until {_moment(self.end)} {_zone(self.end)}"
        end = timezone.localtime(self.end)
        same_day = timezone.localtime(self.start).date() == end.date()
        return (f"{_moment(self.start)}–{end:%H:%M}" if same_day
                else f"{_moment(self.start)} – {_moment(self.end)}") + f" {_zone(self.end)}"


def _zone(at: datetime) -> str:
    return timezone.localtime(at).tzname() or "UTC"


def window_of(status: str, scheduled_for: datetime | None, now: datetime) -> Window | None:
    """The time a change occupies: its scheduled hour; from now until the horizon (and
    its duration) when open without a time; the next hour while it deploys; none once
    finished."""
    if status == ChangeRequest.Status.DEPLOYING:
        return Window(now, now + EXPECTED_DURATION, "deploying")
    if status not in ChangeRequest.OPEN:
        return None
    if scheduled_for is not None:
        return Window(scheduled_for, scheduled_for + EXPECTED_DURATION, "scheduled")
    return Window(now, now + OPEN_HORIZON + EXPECTED_DURATION, "unscheduled")


@dataclass(frozen=True)
class Conflict:
    kind: str
    change_id: int | None  # the other change; None for a freeze
    reference: str  # the other change's reference, or the freeze's reason
    reason: str
    allowed: bool = False  # a freeze the policy passes: shown, never blocking
    environment_id: int | None = None  # where the other change goes

    @property
    def after_reference(self) -> str | None:
        """The reason after the other change's reference it starts with (pages link it)."""
        if self.change_id and self.reason.startswith(self.reference):
            return self.reason[len(self.reference):]
        return None

    def as_dict(self) -> dict:
        return {"change": self.change_id, "kind": self.kind, "reason": self.reason,
                "allowed": self.allowed}


@dataclass(frozen=True)
class Facts:
    """One change as the rules see it."""

    id: int
    change_type: str
    application_id: int
    application: str
    environment_id: int
    environment: str
    on_call_id: int | None
    on_call: str
    window: Window | None

    @property
    def reference(self) -> str:
        return f"CR-{self.id}"


@dataclass
class World:
    """What the rules compare a change with, read once for many changes."""

    changes: list[Facts] = field(default_factory=list)
    depends: set[tuple[int, int]] = field(default_factory=set)  # (app, app it depends on)
    addresses: dict[tuple[int, int], set[str]] = field(
        default_factory=lambda: defaultdict(set))  # (app, environment) -> target addresses
    freezes: dict[int, list[Freeze]] = field(default_factory=lambda: defaultdict(list))
    passes_freeze: set[tuple[int, str]] = field(default_factory=set)  # (environment, type)
    # "in an overlapping window (...)" of each change, written once for all the changes
    # compared with it (a list page compares each of its changes with every open one).
    _overlapping: dict[int, str] = field(default_factory=dict)

    _by_place: dict | None = None

    def near(self, change: Facts) -> list[Facts]:
        """The changes that may conflict with ``change``: those in its environment and
        those with its on-call engineer (no other rule compares two changes)."""
        if self._by_place is None:
            self._by_place = defaultdict(list)
            for other in self.changes:
                self._by_place[("environment", other.environment_id)].append(other)
                if other.on_call_id is not None:
                    self._by_place[("on_call", other.on_call_id)].append(other)
        found = {o.id: o for o in self._by_place.get(("environment", change.environment_id), [])}
        if change.on_call_id is not None:
            for other in self._by_place.get(("on_call", change.on_call_id), []):
                found.setdefault(other.id, other)
        return list(found.values())

    def overlapping(self, other: Facts) -> str:
        if other.id not in self._overlapping:
            self._overlapping[other.id] = (f"in an overlapping window "
                                           f"({other.window.describe()})")
        return self._overlapping[other.id]


def _freeze_conflicts(change: Facts, world: World) -> list[Conflict]:
    found = []
    window = change.window
    for freeze in world.freezes[change.environment_id]:
        spans = {*schedule.freeze_spans(freeze, window.start),
                 *schedule.freeze_spans(freeze, window.end)}
        hit = sorted(span for span in spans if span[0] < window.end and window.start < span[1])
        if not hit:
            continue
        start, end = hit[0]
        allowed = (change.environment_id, change.change_type) in world.passes_freeze
        found.append(Conflict(
            FREEZE, None, freeze.reason,
            f"the freeze “{freeze.reason}” in {change.environment} ({_moment(start)} – "
            f"{_moment(end)} {_zone(end)}) overlaps this change's window ({window.describe()})"
            + ("; its policy passes freezes" if allowed else ""), allowed=allowed))
    return found


def detect(change: Facts, world: World) -> list[Conflict]:
    """Every conflict of ``change`` with the other changes and freezes of ``world``."""
    if change.window is None:
        return []
    found = _freeze_conflicts(change, world)
    for other in world.near(change):
        if other.id == change.id or other.window is None \
                or not change.window.overlaps(other.window):
            continue
        when = world.overlapping(other)
        if other.environment_id == change.environment_id:
            deploys = f"{other.reference} deploys {other.application}"
            place = f"to {other.environment}"
            if other.application_id == change.application_id:
                found.append(Conflict(SAME_APPLICATION, other.id, other.reference,
                                      f"{deploys} {place} {when}",
                                      environment_id=other.environment_id))
            else:
                if (change.application_id, other.application_id) in world.depends:
                    found.append(Conflict(DEPENDENCY, other.id, other.reference,
                                          f"{deploys}, which {change.application} depends "
                                          f"on, {place} {when}",
                                          environment_id=other.environment_id))
                elif (other.application_id, change.application_id) in world.depends:
                    found.append(Conflict(DEPENDENCY, other.id, other.reference,
                                          f"{deploys}, which depends on "
                                          f"{change.application}, {place} {when}",
                                          environment_id=other.environment_id))
                shared = (world.addresses[(change.application_id, change.environment_id)]
                          & world.addresses[(other.application_id, other.environment_id)])
                if shared:
                    found.append(Conflict(SAME_TARGETS, other.id, other.reference,
                                          f"{deploys} {place} on the same targets "
                                          f"({', '.join(sorted(shared))}) {when}",
                                          environment_id=other.environment_id))
        if change.on_call_id is not None and other.on_call_id == change.on_call_id:
            found.append(Conflict(ON_CALL, other.id, other.reference,
                                  f"{other.reference} ({other.application} to "
                                  f"{other.environment}) has the same on-call engineer, "
                                  f"{change.on_call}, {when}",
                                  environment_id=other.environment_id))
    return sorted(found, key=lambda c: (KINDS.index(c.kind), c.change_id or 0))


def as_blockers(conflicts: list[Conflict], policy) -> list[tuple[str, str]]:
    """(code, message) for each conflict that stops the change: only under a policy
    that says conflicts block, and never a freeze the policy passes. A change in
    another environment is not named (whoever reads the blockers may not see it)."""
    if not (policy and policy.conflicts_block):
        return []
    return [("conflict", "conflict: " + (
        c.reason if c.environment_id in (None, policy.environment_id) else HIDDEN[c.kind]))
        for c in conflicts if not c.allowed]


# A conflict with a change the reader may not see, in plain words that name nothing.
HIDDEN = {
    SAME_APPLICATION: "another change deploys this application in an overlapping window",
    DEPENDENCY: "another change deploys an application this one depends on, or that "
                "depends on it, in an overlapping window",
    SAME_TARGETS: "another change deploys to the same targets in an overlapping window",
    ON_CALL: "another change elsewhere has the same on-call engineer in an overlapping "
             "window",
}


def visible_environments(user) -> set[int] | None:
    """Environments whose changes ``user`` may see (None: all), as
    ``selectors.changes_visible_to`` reckons them; one query besides the permissions
    read once per request."""
    if user.is_superuser or is_auditor(user):
        return None
    delegated = Delegation.objects.filter(delegate=user, revoked_at__isnull=True,
                                          expires_at__gt=clock.now()
                                          ).values_list("environment_id", flat=True)
    return set(environment_permissions(user)) | set(delegated)


def seen_by(conflicts: list[Conflict], visible: set[int] | None) -> list[Conflict]:
    """``conflicts`` as a reader who sees the changes of ``visible`` environments (None:
    all) may read them: another change elsewhere is neither named nor linked."""
    if visible is None:
        return conflicts
    return [c if c.environment_id is None or c.environment_id in visible else
            Conflict(c.kind, None, "", HIDDEN[c.kind], c.allowed, None) for c in conflicts]


_FIELDS = ("id", "status", "scheduled_for", "change_type", "release__application_id",
           "release__application__slug", "environment_id", "environment__slug",
           "on_call_id", "on_call__username")


def _facts(row: dict, now: datetime) -> Facts:
    return Facts(id=row["id"], change_type=row["change_type"],
                 application_id=row["release__application_id"],
                 application=row["release__application__slug"],
                 environment_id=row["environment_id"], environment=row["environment__slug"],
                 on_call_id=row["on_call_id"], on_call=row["on_call__username"] or "",
                 window=window_of(row["status"], row["scheduled_for"], now))


def conflicts_for(changes, *, at: datetime | None = None) -> dict[int, list[Conflict]]:
    """{change id: its conflicts} for many changes in five queries (none when none of
    them may still run)."""
    changes = list(changes)
    found: dict[int, list[Conflict]] = {c.pk: [] for c in changes}
    live = [c for c in changes if c.status in ACTIVE]
    if not live:
        return found
    now = at or clock.now()
    environments = {c.environment_id for c in live}
    on_calls = {c.on_call_id for c in live if c.on_call_id}
    rows = ChangeRequest.objects.filter(
        Q(pk__in=[c.pk for c in live])
        | Q(status__in=ACTIVE) & (Q(environment_id__in=environments)
                                  | Q(on_call_id__in=on_calls))).values(*_FIELDS)
    world = World(changes=[_facts(row, now) for row in rows])
    asked = {c.pk for c in live}
    asked_apps = {f.application_id for f in world.changes if f.id in asked}
    through = Application.depends_on.through
    world.depends = set(through.objects.filter(
        Q(from_application_id__in=asked_apps) | Q(to_application_id__in=asked_apps))
        .values_list("from_application_id", "to_application_id"))
    for app_id, env_id, address in Target.objects.filter(
            environment_id__in=environments,
            application_id__in={f.application_id for f in world.changes}
    ).exclude(address="").values_list("application_id", "environment_id", "address"):
        world.addresses[(app_id, env_id)].add(address)
    for freeze in Freeze.objects.filter(environment_id__in=environments):
        world.freezes[freeze.environment_id].append(freeze)
    world.passes_freeze = set(ApprovalPolicy.objects.filter(
        environment_id__in=environments, passes_freeze=True).values_list(
        "environment_id", "change_type"))
    for facts in world.changes:
        if facts.id in asked:
            found[facts.id] = detect(facts, world)
    return found
