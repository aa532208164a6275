"""Who may decide a gate of a change, and why not: the one answer.

The decision service, the inbox, the change page, the API, the dashboard and the
notifications all ask ``gate_verdicts`` (and the post-implementation review asks
``review_verdict``), so they cannot disagree. The functions here are pure: they read
nothing from the database. Callers load the facts in bulk
(``approvals.selectors.person_facts`` for one person, ``candidate_facts`` for everyone
who may decide somewhere), so a list answers for every row in a fixed number of queries.

The rules, in the order a refusal names them:

1. the change takes decisions and the gate waits for one (``gate_closed``);
2. the requester never decides their own change (``self_approval``); a service account
   (CI, automation: ``identity.accounts``) never decides a gate, whatever it was granted
   (``service_account``);
3. nobody decides a change that ships commits they wrote or merged (``author``,
   ``merger``; CI and the push hook report them, DESIGN.md section 8);
4. the person holds the gate role's permission on the environment, or a live
   delegation of it (not revoked, not expired) from someone who still holds it
   (``not_eligible``);
5. a delegate stands in for their delegator and inherits the delegator's conflicts:
   at least one of the delegators must be free of rules 2 and 3 (``delegate_conflict``);
6. one person decides at most one gate of a change (``one_gate_per_person``).

``stopped_counting`` applies rules 2, 3 and 5 again to approvals already given: facts
that arrive after a decision (CI reporting the approver as an author) make it stop
counting, and every start of a deployment checks that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from approvals.models import Approval, ChangeRequest, Gate, GateRole

ELIGIBLE = "eligible"
GATE_CLOSED = "gate_closed"
REQUESTER = "self_approval"
AUTHOR = "author"
MERGER = "merger"
NO_AUTHORITY = "not_eligible"
DELEGATE_CONFLICT = "delegate_conflict"
ONE_GATE = "one_gate_per_person"
SERVICE_ACCOUNT = "service_account"

# Every reason code, for documentation and the API schema.
CODES = (ELIGIBLE, GATE_CLOSED, REQUESTER, AUTHOR, MERGER, NO_AUTHORITY, DELEGATE_CONFLICT,
         ONE_GATE, SERVICE_ACCOUNT)


@dataclass(frozen=True)
class Lent:
    """A delegation to the person: the delegator's authority over ``role`` in an
    environment, until ``expires_at``."""

    id: int
    environment_id: int
    role: str
    delegator_id: int
    delegator: str  # username
    delegator_holds: bool  # the delegator (active) still holds the role's permission there
    expires_at: datetime
    revoked: bool = False

    def live(self, at: datetime) -> bool:
        return not self.revoked and self.expires_at > at and self.delegator_holds


@dataclass(frozen=True)
class Person:
    """What decides whether someone may decide: who they are, what they hold where, and
    what was lent to them."""

    id: int
    username: str
    active: bool = True
    superuser: bool = False
    service: bool = False  # a service account (identity.accounts): never decides a gate
    held: Mapping[int, frozenset[str]] = field(default_factory=dict)  # env id -> codenames
    lent: tuple[Lent, ...] = ()

    def holds(self, codename: str, environment_id: int) -> bool:
        if not self.active:
            return False
        return self.superuser or codename in self.held.get(environment_id, ())


@dataclass(frozen=True)
class Verdict:
    eligible: bool
    code: str
    detail: str = ""
    # The delegator the person stands in for (None when they hold the permission).
    on_behalf_of: Lent | None = None


def conflict(person_id: int | None, username: str, change: ChangeRequest) -> str | None:
    """Why the person may not decide on ``change`` whoever they are (rules 2 and 3)."""
    if person_id is not None and change.requested_by_id == person_id:
        return REQUESTER
    release = change.release
    name = username.casefold()
    if name in {a.casefold() for a in release.authors or []}:
        return AUTHOR
    if name in {m.casefold() for m in release.mergers or []}:
        return MERGER
    return None


def _conflict_words(code: str, change: ChangeRequest) -> str:
    return {REQUESTER: f"requested {change.reference}",
            AUTHOR: f"wrote commits in {change.release}",
            MERGER: f"merged commits in {change.release}"}[code]


def authority(person: Person, environment_id: int, role: str, at: datetime
              ) -> tuple[bool, list[Lent]]:
    """(holds the role's permission there, the live delegations of it to the person,
    oldest first)."""
    if not person.active:
        return False, []
    direct = person.holds(GateRole(role).permission, environment_id)
    lent = sorted((d for d in person.lent if d.environment_id == environment_id
                   and d.role == role and d.live(at)), key=lambda d: d.id)
    return direct, lent


def roles_with_authority(person: Person, at: datetime,
                         environment_ids: Iterable[int] | None = None) -> dict[int, set[str]]:
    """{environment id: {gate role}} the person may decide there, directly or through a
    live delegation from someone who still holds it, before any change's own rules
    (default: every environment the person holds something on or was lent)."""
    if environment_ids is None:
        environment_ids = set(person.held) | {d.environment_id for d in person.lent}
    found: dict[int, set[str]] = {}
    for env_id in environment_ids:
        roles = set()
        for role in GateRole:
            direct, lent = authority(person, env_id, role.value, at)
            if direct or lent:
                roles.add(role.value)
        if roles:
            found[env_id] = roles
    return found


def decided(gates: Iterable[Gate]) -> dict[int, Gate]:
    """{person id: the gate they decided} from the gates' prefetched approvals, counting
    only decisions that stand (not withdrawn)."""
    found: dict[int, Gate] = {}
    for gate in gates:
        for approval in gate.approvals.all():
            if approval.withdrawn_at is None:
                found[approval.approver_id] = gate
    return found


def _standing(person: Person, change: ChangeRequest, role: str, at: datetime,
              role_label: str) -> Verdict:
    """Rules 2 to 5 for ``person`` on ``role`` of ``change``."""
    why = conflict(person.id, person.username, change)
    if why == REQUESTER:
        return Verdict(False, REQUESTER,
                       "you requested this change, so you cannot decide its gates")
    if person.service:
        # Automation acts through tokens an administrator issues for it; a gate is a
        # person's decision, so a service account never takes one.
        return Verdict(False, SERVICE_ACCOUNT, f"{person.username} is a service account; "
                                               "gates are decided by people")
    if why == AUTHOR:
        return Verdict(False, AUTHOR, f"you wrote commits in {change.release}, so you "
                                      "cannot approve a change that ships it")
    if why == MERGER:
        return Verdict(False, MERGER, f"you merged commits in {change.release}, so you "
                                      "cannot approve a change that ships it")
    direct, lent = authority(person, change.environment_id, role, at)
    if direct:
        return Verdict(True, ELIGIBLE)
    if not lent:
        return Verdict(False, NO_AUTHORITY, f"you may not decide the {role_label} gate on "
                                            f"{change.environment.name}")
    free = [d for d in lent if conflict(d.delegator_id, d.delegator, change) is None]
    if not free:
        first = lent[0]
        words = _conflict_words(conflict(first.delegator_id, first.delegator, change), change)
        return Verdict(False, DELEGATE_CONFLICT,
                       f"you decide the {role_label} gate for {first.delegator}, who "
                       f"{words}; a delegate cannot decide a change their delegator "
                       "could not")
    return Verdict(True, ELIGIBLE, on_behalf_of=free[0])


def gate_verdict(*, person: Person, change: ChangeRequest, gate: Gate,
                 decided_by: Mapping[int, Gate], at: datetime) -> Verdict:
    """Whether ``person`` may decide ``gate`` of ``change`` now, and if not why.

    ``decided_by`` is ``decided(change's gates)``: who already decided which gate.
    """
    label = gate.get_role_display()
    if change.status != ChangeRequest.Status.PENDING_APPROVAL:
        return Verdict(False, GATE_CLOSED, f"{change.reference} is "
                       f"{change.get_status_display().lower()}; it takes no more decisions")
    if gate.status != Gate.Status.PENDING:
        return Verdict(False, GATE_CLOSED, f"the {label} gate is already {gate.status}")
    verdict = _standing(person, change, gate.role, at, label)
    if not verdict.eligible:
        return verdict
    earlier = decided_by.get(person.id)
    if earlier is not None:
        return Verdict(False, ONE_GATE,
                       f"you already decided the {earlier.get_role_display()} gate of "
                       f"{change.reference}; one person decides at most one gate")
    return verdict


def gate_verdicts(*, person: Person, change: ChangeRequest, at: datetime,
                  gates: Iterable[Gate] | None = None) -> dict[int, Verdict]:
    """{gate id: verdict} for every gate of ``change`` (its prefetched gates and their
    approvals, unless ``gates`` are given)."""
    gates = list(change.gates.all() if gates is None else gates)
    decided_by = decided(gates)
    return {gate.pk: gate_verdict(person=person, change=change, gate=gate,
                                  decided_by=decided_by, at=at)
            for gate in gates}


def review_verdict(*, person: Person, change: ChangeRequest, at: datetime) -> Verdict:
    """Whether ``person`` may close the post-implementation review of ``change``: CAB
    there (by permission or live delegation), never its requester nor an author or
    merger of its release, nor a delegate standing for one of them."""
    verdict = _standing(person, change, GateRole.CAB.value, at, GateRole.CAB.label)
    if verdict.code == REQUESTER:
        return Verdict(False, REQUESTER, f"you requested {change.reference}, so CAB "
                                         "reviews it, not you")
    if verdict.code == NO_AUTHORITY:
        return Verdict(False, NO_AUTHORITY, "only CAB closes post-implementation reviews")
    if verdict.code in (AUTHOR, MERGER):
        return Verdict(False, verdict.code, verdict.detail.replace(
            "approve a change that ships it", "review a change that shipped it"))
    return verdict


@dataclass(frozen=True)
class Stale:
    """An approval that stopped counting: its approver (or the delegator they stood in
    for) now has a conflict with the change."""

    approval: Approval
    code: str  # self_approval, author, merger or delegate_conflict
    detail: str

    def as_blocker(self) -> tuple[str, str]:
        return ("approval_conflict",
                f"the {self.approval.gate.get_role_display()} approval by "
                f"{self.approval.approver.get_username()} no longer counts: {self.detail}")


def stopped_counting(change: ChangeRequest, gates: Iterable[Gate] | None = None
                     ) -> list[Stale]:
    """Standing approvals of ``change`` whose approver, or the delegator they decided
    for, is now its requester, an author or a merger of its release (rules 2, 3, 5
    applied again). The gates come with their approvals, approvers and delegators."""
    found = []
    for gate in (change.gates.all() if gates is None else gates):
        for approval in gate.approvals.all():
            if approval.withdrawn_at is not None or \
                    approval.decision != Approval.Decision.APPROVED:
                continue
            approver = approval.approver
            why = conflict(approval.approver_id, approver.get_username(), change)
            if why is not None:
                found.append(Stale(approval, why, f"{approver.get_username()} "
                                   f"{_conflict_words(why, change)}"))
                continue
            if approval.on_behalf_of_id:
                delegator = approval.on_behalf_of
                why = conflict(approval.on_behalf_of_id, delegator.get_username(), change)
                if why is not None:
                    found.append(Stale(approval, DELEGATE_CONFLICT,
                                       f"{approver.get_username()} decided for "
                                       f"{delegator.get_username()}, who "
                                       f"{_conflict_words(why, change)}"))
    return found
