"""Read queries shared by pages and the API, with their joins decided once.

The heart of it is ``change_blockers``: everything that stands between a change
and a deployment, each with a stable code and plain words, and ``preflight``,
the same for a change not yet requested, with the earliest time it could run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Count, F, OuterRef, Prefetch, Q, QuerySet, Subquery, Window
from django.db.models.functions import RowNumber

from approvals import checks, conflicts, eligibility, schedule
from approvals.models import (
    PRE_DEPLOYMENT_KINDS,
    Approval,
    ApprovalPolicy,
    ChangeRequest,
    ChecklistItem,
    ChecklistTemplate,
    Delegation,
    Freeze,
    Gate,
    GateRole,
    MaintenanceWindow,
    PostImplementationReview,
)
from audit.permissions import is_auditor
from catalog.models import Environment, Release
from catalog.permissions import environment_permissions
from core import clock
from core.permissions import permission_holders
from deployments import selectors as deployment_selectors
from deployments.models import Deployment
from identity import accounts

CLOSED = {ChangeRequest.Status.REJECTED, ChangeRequest.Status.CANCELLED,
          ChangeRequest.Status.DEPLOYED, ChangeRequest.Status.FAILED,
          ChangeRequest.Status.ROLLED_BACK}


@dataclass(frozen=True)
class Blocker:
    code: str
    message: str

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass
class Rules:
    """What the blockers of a set of changes depend on, loaded in a fixed number of queries."""

    environments: dict[int, Environment] = field(default_factory=dict)
    policies: dict[tuple[int, str], ApprovalPolicy] = field(default_factory=dict)
    windows: dict[int, list[MaintenanceWindow]] = field(default_factory=lambda: defaultdict(list))
    freezes: dict[int, list[Freeze]] = field(default_factory=lambda: defaultdict(list))
    succeeded: set[tuple[int, int]] = field(default_factory=set)  # (release, environment)
    last_final: dict[tuple[int, int], str] = field(default_factory=dict)  # (app, env) -> status
    conflicts: dict[int, list[conflicts.Conflict]] = field(default_factory=dict)  # change id

    def previous_environment(self, environment: Environment) -> Environment | None:
        earlier = [e for e in self.environments.values() if e.order < environment.order]
        return max(earlier, key=lambda e: e.order) if earlier else None


def load_rules(*, environment_ids: set[int], release_ids: set[int],
               application_ids: set[int]) -> Rules:
    rules = Rules()
    rules.environments = {e.pk: e for e in Environment.objects.all()}
    for policy in ApprovalPolicy.objects.filter(environment_id__in=environment_ids
                                                ).prefetch_related("gates"):
        rules.policies[(policy.environment_id, policy.change_type)] = policy
    for window in MaintenanceWindow.objects.filter(environment_id__in=environment_ids):
        rules.windows[window.environment_id].append(window)
    for freeze in Freeze.objects.filter(environment_id__in=environment_ids):
        rules.freezes[freeze.environment_id].append(freeze)
    rules.succeeded = set(
        Deployment.objects.filter(release_id__in=release_ids,
                                  status=Deployment.Status.SUCCEEDED)
        .values_list("release_id", "environment_id")
    )
    # The last finished run per application and environment: an index look-up per pair
    # (never a scan of the history), then their statuses.
    last = deployment_selectors.latest_per_application_environment(
        environment_ids=environment_ids, application_ids=application_ids,
        statuses=Deployment.FINAL, by="created")
    for key, (_, status) in last.items():
        rules.last_final[key] = status
    return rules


def rules_for(changes: list[ChangeRequest]) -> Rules:
    rules = load_rules(
        environment_ids={c.environment_id for c in changes},
        release_ids={c.release_id for c in changes},
        application_ids={c.release.application_id for c in changes},
    )
    rules.conflicts = conflicts.conflicts_for(changes)  # conflicts: in bulk too
    return rules


def _environment_blockers(*, release: Release, environment: Environment, policy, rules: Rules,
                          at: datetime, change_id: int | None) -> list[Blocker]:
    """Blockers that come from the environment and the calendar, not from the change."""
    blockers = []
    if environment.locked:
        blockers.append(Blocker(
            "environment_locked",
            f"{environment.name} is locked: {environment.lock_reason or 'no reason given'}"))
    passes_freeze = bool(policy and policy.passes_freeze)
    frozen = schedule.active_freeze(rules.freezes[environment.pk], at)
    if frozen and not passes_freeze:
        freeze, ends = frozen
        blockers.append(Blocker(
            "freeze", f"change freeze in {environment.name} until {ends:%Y-%m-%d %H:%M %Z}: "
                      f"{freeze.reason}; only emergency changes pass a freeze"))
    if policy and policy.requires_window and not schedule.current_window(
            rules.windows[environment.pk], at):
        nxt = schedule.next_window_start(rules.windows[environment.pk], at)
        when = f"the next opens {nxt:%a %Y-%m-%d %H:%M %Z}" if nxt else \
            "no maintenance window is defined"
        blockers.append(Blocker("outside_window",
                                f"outside the maintenance windows of {environment.name}; {when}"))
    if policy and policy.requires_promotion:
        previous = rules.previous_environment(environment)
        if previous and (release.pk, previous.pk) not in rules.succeeded:
            blockers.append(Blocker(
                "promotion", f"{release} has not yet succeeded in {previous.name}; "
                             "promote it through there first"))
    # Another deployment of the application running there blocks nothing: the new one
    # is queued behind it (deployments.services.deployment_create) and starts when its
    # turn comes.
    return blockers


def change_blockers(change: ChangeRequest, *, rules: Rules | None = None,
                    at: datetime | None = None) -> list[Blocker]:
    """Everything that stands between this change and a deployment, in plain words."""
    status = change.status
    if status in CLOSED:
        return [Blocker("change_closed", f"the change is {change.get_status_display().lower()}")]
    rules = rules or rules_for([change])
    at = at or clock.now()
    policy = rules.policies.get((change.environment_id, change.change_type))
    blockers: list[Blocker] = []
    if status == ChangeRequest.Status.DRAFT:
        blockers.append(Blocker("draft", "the change is a draft; submit it for approval"))
    if status == ChangeRequest.Status.DEPLOYING:
        blockers.append(Blocker("deploying",
                                "the change already has a deployment, running or queued"))
    for gate in change.gates.all():
        if gate.status != Gate.Status.APPROVED:
            approved = sum(1 for a in gate.approvals.all()
                           if a.decision == Approval.Decision.APPROVED and not a.withdrawn_at)
            blockers.append(Blocker(
                f"gate_{gate.role}",
                f"{gate.get_role_display()} approval pending ({approved} of {gate.required})"))
    if status in ChangeRequest.OPEN:
        # Facts that arrived after a decision (CI reporting its approver as an author,
        # say): the approval no longer counts, and the next start reopens its gate.
        blockers += [Blocker(*stale.as_blocker())
                     for stale in eligibility.stopped_counting(change)]
    covered = set()
    if policy and policy.requires_on_call and not change.on_call_id:
        blockers.append(Blocker("on_call_missing", "name the on-call engineer"))
        covered.add("on_call_named")
    if policy and policy.requires_rollback_plan and not change.rollback_plan.strip():
        blockers.append(Blocker("rollback_plan_missing", "document the rollback plan"))
        covered.add("rollback_plan_present")
    for item in change.checklist.all():
        if item.kind not in PRE_DEPLOYMENT_KINDS or item.auto_check in covered:
            continue
        done, why = checks.evaluate(item, change, rules)
        if not done:
            blockers.append(Blocker(
                "checklist", f"checklist: {item.text}" + (f" ({why})" if why else "")))
    blockers += _environment_blockers(release=change.release, environment=change.environment,
                                      policy=policy, rules=rules, at=at, change_id=change.pk)
    blockers += [Blocker(*found) for found in conflicts.as_blockers(  # conflicts
        rules.conflicts.get(change.pk, []), policy)]
    return blockers


def blockers_for_many(changes: list[ChangeRequest], *, at: datetime | None = None,
                      rules: Rules | None = None) -> dict[int, list[Blocker]]:
    """{change id: its blockers} for a page of changes: ``change_blockers`` for each, over
    rules loaded once, so a page costs the same queries for one change or a hundred.
    The changes come with their gates, approvals and checklist prefetched (and the
    ``rules_for`` them when the page read those already)."""
    if not changes:
        return {}
    rules = rules or rules_for(changes)
    at = at or clock.now()
    return {change.pk: change_blockers(change, rules=rules, at=at) for change in changes}


TIME_CODES = {"freeze", "outside_window"}


def earliest_deploy_time(change: ChangeRequest, *, rules: Rules | None = None,
                         at: datetime | None = None) -> datetime | None:
    """The first moment windows and freezes allow; None when they never do."""
    rules = rules or rules_for([change])
    at = at or clock.now()
    policy = rules.policies.get((change.environment_id, change.change_type))
    return schedule.earliest_allowed(
        at=at, windows=rules.windows[change.environment_id],
        freezes=rules.freezes[change.environment_id],
        requires_window=bool(policy and policy.requires_window),
        passes_freeze=bool(policy and policy.passes_freeze))


def preflight(*, release: Release, environment: Environment, change_type: str,
              at: datetime | None = None) -> dict:
    """Every blocker a deployment of ``release`` to ``environment`` would meet, and when.

    For a change not yet requested: its gates count as pending and its manual
    checklist items as not done.
    """
    at = at or clock.now()
    rules = load_rules(environment_ids={environment.pk}, release_ids={release.pk},
                       application_ids={release.application_id})
    policy = rules.policies.get((environment.pk, change_type))
    blockers = []
    if policy is None:
        blockers.append(Blocker("no_policy", f"{environment.name} has no policy for "
                                             f"{change_type} changes"))
    for gate in (policy.gates.all() if policy else []):
        blockers.append(Blocker(f"gate_{gate.role}",
                                f"{gate.get_role_display()} approval needed "
                                f"(0 of {gate.required})"))
    if policy and policy.requires_on_call:
        blockers.append(Blocker("on_call_missing", "name the on-call engineer"))
    if policy and policy.requires_rollback_plan:
        blockers.append(Blocker("rollback_plan_missing", "document the rollback plan"))
    probe = ChangeRequest(release=release, environment=environment, change_type=change_type)
    for template in ChecklistTemplate.objects.filter(environment=environment,
                                                     change_type=change_type,
                                                     kind__in=PRE_DEPLOYMENT_KINDS):
        if template.auto_check in ("on_call_named", "rollback_plan_present"):
            continue
        item = ChecklistItem(kind=template.kind, text=template.text,
                             auto_check=template.auto_check)
        if template.auto_check in ("approvals_documented",):
            continue
        done, why = checks.evaluate(item, probe)
        if not done:
            blockers.append(Blocker("checklist", f"checklist: {template.text}"
                                    + (f" ({why})" if why else "")))
    blockers += _environment_blockers(release=release, environment=environment, policy=policy,
                                      rules=rules, at=at, change_id=None)
    earliest = schedule.earliest_allowed(
        at=at, windows=rules.windows[environment.pk], freezes=rules.freezes[environment.pk],
        requires_window=bool(policy and policy.requires_window),
        passes_freeze=bool(policy and policy.passes_freeze))
    return {
        "ready": not blockers,
        "blockers": [b.as_dict() for b in blockers],
        "earliest": earliest if not environment.locked else None,
        "at": at,
    }


def preflight_change(change: ChangeRequest, *, at: datetime | None = None) -> dict:
    """Preflight of an existing change: its own gates, checklist, schedule and calendar."""
    at = at or clock.now()
    rules = rules_for([change])
    blockers = change_blockers(change, rules=rules, at=at)
    if change.status in (ChangeRequest.Status.PENDING_APPROVAL, ChangeRequest.Status.DRAFT):
        blockers += unsatisfiable_gates(change)
    earliest = None if change.environment.locked or change.status in CLOSED else \
        earliest_deploy_time(change, rules=rules, at=at)
    return {"ready": not blockers, "blockers": [b.as_dict() for b in blockers],
            "earliest": earliest, "at": at}


def change_detail_queryset() -> QuerySet[ChangeRequest]:
    """Changes with everything their page or API body shows, in a constant number of queries."""
    latest = Deployment.objects.filter(change_id=OuterRef("pk")).order_by("-id")
    return ChangeRequest.objects.with_related().annotate(
        latest_deployment_id=Subquery(latest.values("pk")[:1]),
    ).prefetch_related(
        Prefetch("gates", queryset=Gate.objects.prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related(
                "approver", "on_behalf_of"))
        )),
        Prefetch("checklist", queryset=ChecklistItem.objects.select_related("done_by")),
    )


def changes_visible_to(user, *, queryset: QuerySet[ChangeRequest] | None = None
                       ) -> QuerySet[ChangeRequest]:
    """Changes to environments the user holds any permission on (or requested), out of
    ``queryset`` (default: with everything the change page shows; a list that shows
    less passes a lighter one, e.g. ``ChangeRequest.objects.with_related()``)."""
    queryset = change_detail_queryset() if queryset is None else queryset
    if user.is_superuser or is_auditor(user):
        return queryset
    env_ids = list(environment_permissions(user).keys())
    delegated = Delegation.objects.filter(delegate=user, revoked_at__isnull=True,
                                          expires_at__gt=clock.now()
                                          ).values("environment_id")
    return queryset.filter(
        Q(environment_id__in=env_ids) | Q(requested_by=user) | Q(environment_id__in=delegated)
    )


WAITING_STATUSES = (ChangeRequest.Status.PENDING_APPROVAL, ChangeRequest.Status.APPROVED,
                    ChangeRequest.Status.SCHEDULED)


def changes_listed(user, *, application: str = "", environment: str = "",
                   status: str = "") -> QuerySet[ChangeRequest]:
    """The change list: changes ``user`` can see with their joins (no gates or
    checklist, which a list does not show), filtered by application and environment
    slug and by status, "waiting" meaning any of ``WAITING_STATUSES``; an unknown status
    filters nothing."""
    changes = changes_visible_to(user, queryset=ChangeRequest.objects.with_related())
    if application:
        changes = changes.filter(release__application__slug=application)
    if environment:
        changes = changes.filter(environment__slug=environment)
    if status == "waiting":
        changes = changes.filter(status__in=WAITING_STATUSES)
    elif status in ChangeRequest.Status.values:
        changes = changes.filter(status=status)
    return changes


def waiting_changes(user, *, per_place: int) -> list[ChangeRequest]:
    """Changes ``user`` can see that wait for approval, a time or someone to deploy them:
    the oldest ``per_place`` per application and environment, each with ``waiting_here``
    (how many wait there in all), gates and approvals loaded. One page whatever the
    number waiting (the dashboard)."""
    place = [F("release__application_id"), F("environment_id")]
    changes = changes_visible_to(user, queryset=ChangeRequest.objects.select_related(
        "release__application", "environment", "requested_by").prefetch_related(
        Prefetch("gates", queryset=Gate.objects.prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related("approver"))))))
    return list(changes.filter(status__in=WAITING_STATUSES).annotate(
        rank=Window(RowNumber(), partition_by=place, order_by=[F("submitted_at").asc(),
                                                               F("id").asc()]),
        waiting_here=Window(Count("id"), partition_by=place),
    ).filter(rank__lte=per_place).order_by("submitted_at", "id"))


def active_delegations(user) -> list[Delegation]:
    return list(Delegation.objects.filter(delegate=user, revoked_at__isnull=True,
                                          expires_at__gt=clock.now())
                .select_related("delegator", "environment"))


def _lent(delegations: list[Delegation], holders: dict[tuple[int, str], set[int]] | None = None
          ) -> dict[int, list[eligibility.Lent]]:
    """{delegate id: [what was lent to them]}, each saying whether its delegator still
    holds the role there (``holders``: ``permission_holders`` over their environments,
    read here when not given)."""
    if not delegations:
        return {}
    if holders is None:
        holders = permission_holders(Environment, {d.environment_id for d in delegations})
    lent: dict[int, list[eligibility.Lent]] = defaultdict(list)
    for d in delegations:
        delegator = d.delegator
        holds = delegator.is_active and (
            delegator.is_superuser
            or d.delegator_id in holders.get((d.environment_id, GateRole(d.role).permission),
                                             ()))
        lent[d.delegate_id].append(eligibility.Lent(
            id=d.pk, environment_id=d.environment_id, role=d.role,
            delegator_id=d.delegator_id, delegator=delegator.get_username(),
            delegator_holds=holds, expires_at=d.expires_at,
            revoked=d.revoked_at is not None))
    return lent


def person_facts(user, *, at: datetime | None = None) -> eligibility.Person:
    """What ``approvals.eligibility`` needs to answer for ``user``: their permissions
    (read once per request), their live delegations and whether each delegator still
    holds what they lent; two to six queries, whatever is listed."""
    if not user.is_authenticated:
        return eligibility.Person(id=0, username="", active=False)
    at = at or clock.now()
    delegations = list(Delegation.objects.filter(
        delegate=user, revoked_at__isnull=True, expires_at__gt=at).select_related("delegator"))
    return eligibility.Person(
        id=user.pk, username=user.get_username(), active=user.is_active,
        superuser=user.is_superuser, service=accounts.is_service_account(user),
        held={env: frozenset(codenames)
              for env, codenames in environment_permissions(user).items()},
        lent=tuple(_lent(delegations).get(user.pk, ())))


def candidate_facts(environment_ids, *, at: datetime | None = None
                    ) -> dict[int, eligibility.Person]:
    """{user id: facts} for everyone who holds a permission on ``environment_ids`` or was
    lent a gate there, in six queries: who a list names as able to decide (the
    dashboard's "waiting for", the approval requests) is then answered person by person
    by ``approvals.eligibility``. Administrators who hold nothing explicitly are not
    named (they may decide, but are not asked to)."""
    environment_ids = list(environment_ids)
    at = at or clock.now()
    holders = permission_holders(Environment, environment_ids)
    delegations = list(Delegation.objects.filter(
        environment_id__in=environment_ids, revoked_at__isnull=True,
        expires_at__gt=at).select_related("delegator"))
    held: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for (env_id, codename), users in holders.items():
        for user_id in users:
            held[user_id][env_id].add(codename)
    lent = _lent(delegations, holders)
    people = get_user_model().objects.filter(pk__in=set(held) | set(lent)).values_list(
        "pk", "username", "is_active", "is_superuser")
    services = set(accounts.service_accounts().filter(pk__in=set(held) | set(lent))
                   .values_list("pk", flat=True))
    return {pk: eligibility.Person(
        id=pk, username=username, active=active, superuser=superuser, service=pk in services,
        held={env: frozenset(codes) for env, codes in held.get(pk, {}).items()},
        lent=tuple(lent.get(pk, ()))) for pk, username, active, superuser in people}


def decidable_roles(user) -> dict[int, set[str]]:
    """{environment id: {gate role, ...}} that ``user`` may decide, directly or by a live
    delegation from someone who still holds the role (before each change's own rules)."""
    return eligibility.roles_with_authority(person_facts(user), clock.now())


def _gate_cards() -> QuerySet[Gate]:
    """Gates with everything an inbox card shows."""
    return (Gate.objects.select_related("change__release__application",
                                        "change__environment", "change__requested_by",
                                        "change__on_call")
            .prefetch_related(
                Prefetch("approvals", queryset=Approval.objects.filter(
                    withdrawn_at__isnull=True).select_related("approver")),
                Prefetch("change__gates", queryset=Gate.objects.prefetch_related(
                    Prefetch("approvals", queryset=Approval.objects.select_related(
                        "approver", "on_behalf_of")))),
                Prefetch("change__checklist", queryset=ChecklistItem.objects.select_related(
                    "done_by"))))


def inbox_gates(user, *, environment: str = "", change_type: str = "",
                person: eligibility.Person | None = None) -> QuerySet[Gate]:
    """Gates ``user`` may decide now (``approvals.eligibility``), oldest change first.

    The gates of the roles they may decide somewhere are read with their changes'
    decisions (a fixed number of queries), each is judged by ``eligibility``, and the
    answer is a queryset of those found eligible, for a pager to slice."""
    at = clock.now()
    person = person or person_facts(user, at=at)
    roles = eligibility.roles_with_authority(person, at)
    if not roles:
        return Gate.objects.none()
    allowed = Q()
    for env_id, role_set in roles.items():
        allowed |= Q(change__environment_id=env_id, role__in=sorted(role_set))
    # The columns the rules read, and one flat read of who decided what (not every gate
    # and approval as instances: a CAB member's candidates are all pending CAB gates).
    candidates = (Gate.objects.filter(allowed, status=Gate.Status.PENDING,
                                      change__status=ChangeRequest.Status.PENDING_APPROVAL)
                  .select_related("change__release__application", "change__environment")
                  .only("id", "role", "status", "change__id", "change__status",
                        "change__requested_by_id", "change__environment_id",
                        "change__release_id", "change__environment__name",
                        "change__release__version", "change__release__authors",
                        "change__release__mergers", "change__release__application__slug"))
    if environment:
        candidates = candidates.filter(change__environment__slug=environment)
    if change_type:
        candidates = candidates.filter(change__change_type=change_type)
    candidates = list(candidates)
    decided: dict[int, dict[int, Gate]] = defaultdict(dict)  # change -> {person: gate}
    for change_id, approver_id, role in Approval.objects.filter(
            gate__change_id__in={g.change_id for g in candidates}, withdrawn_at__isnull=True,
    ).order_by("gate_id", "id").values_list("gate__change_id", "approver_id", "gate__role"):
        decided[change_id][approver_id] = Gate(role=role)  # eligibility.decided's answer
    eligible = [gate.pk for gate in candidates if eligibility.gate_verdict(
        person=person, change=gate.change, gate=gate, decided_by=decided[gate.change_id],
        at=at).eligible]
    return _gate_cards().filter(pk__in=eligible).order_by("change__submitted_at", "id")


def open_reviews(user, *, person: eligibility.Person | None = None
                 ) -> list[PostImplementationReview]:
    """Open post-implementation reviews ``user`` may close (``eligibility.review_verdict``:
    CAB there, not the change's requester, nor an author or merger of its release)."""
    at = clock.now()
    person = person or person_facts(user, at=at)
    env_ids = [env for env, roles in eligibility.roles_with_authority(person, at).items()
               if GateRole.CAB in roles]
    if not env_ids:
        return []
    reviews = (PostImplementationReview.objects.filter(closed_at__isnull=True,
                                                       change__environment_id__in=env_ids)
               .select_related("change__release__application", "change__environment")
               .order_by("opened_at"))
    return [review for review in reviews
            if eligibility.review_verdict(person=person, change=review.change, at=at).eligible]


def deciders(environment_ids) -> dict[tuple[int, str], set[int]]:
    """{(environment id, gate role): {user id, ...}}: who holds the authority to decide
    each gate there, by permission or by a live delegation from someone who still holds
    it (``candidate_facts``); a change's own rules (``eligibility.gate_verdict``) then
    exclude its requester, authors, mergers and their delegates."""
    at = clock.now()
    found: dict[tuple[int, str], set[int]] = {}
    for person in candidate_facts(environment_ids, at=at).values():
        for env_id, roles in eligibility.roles_with_authority(
                person, at, environment_ids).items():
            for role in roles:
                found.setdefault((env_id, role), set()).add(person.id)
    return found


def eligible_people(environment: Environment, role: str) -> set[int]:
    """Active users who hold the permission for ``role`` on ``environment``, or a delegation."""
    return set(deciders([environment.pk]).get((environment.pk, GateRole(role).value), ()))


def gate_deciders(changes: list[ChangeRequest], *, at: datetime | None = None,
                  people: dict[int, eligibility.Person] | None = None
                  ) -> dict[int, list[eligibility.Person]]:
    """{gate id: [people who may decide it now, by name]} for the pending gates of
    ``changes`` (their gates and approvals prefetched), each judged by
    ``eligibility.gate_verdict``, in the five queries of ``candidate_facts`` (none when
    the caller read them: ``people``). Who a gate waits for (the dashboard) and who is
    asked to decide it (the notifications)."""
    if not changes:
        return {}
    at = at or clock.now()
    if people is None:
        people = candidate_facts({c.environment_id for c in changes}, at=at)
    people = sorted(people.values(), key=lambda p: p.username)
    # Only someone with authority over a role there can be eligible: judge those alone.
    authority = eligibility.authority
    with_authority: dict[tuple[int, str], list[eligibility.Person]] = {}
    found: dict[int, list[eligibility.Person]] = {}
    for change in changes:
        gates = list(change.gates.all())
        decided_by = eligibility.decided(gates)
        for gate in gates:
            if gate.status != Gate.Status.PENDING:
                continue
            if (key := (change.environment_id, gate.role)) not in with_authority:
                with_authority[key] = [p for p in people if any(authority(p, *key, at))]
            found[gate.pk] = [p for p in with_authority[key] if eligibility.gate_verdict(
                person=p, change=change, gate=gate, decided_by=decided_by, at=at).eligible]
    return found


def unsatisfiable_gates(change: ChangeRequest) -> list[Blocker]:
    """Gates that cannot be filled: too few eligible people once the rules exclude some.

    Each gate needs its own count of distinct people and one person fills at most
    one gate, so this is a matching of people to gate seats. Who may take a seat is
    ``eligibility.gate_verdict``'s answer (people who decided a gate already are out).
    """
    if change.status not in (ChangeRequest.Status.PENDING_APPROVAL, ChangeRequest.Status.DRAFT):
        return []
    gates = list(change.gates.all())
    eligible = gate_deciders([change], at=clock.now()) if gates else {}
    seats: list[tuple[Gate, set[int]]] = []
    for gate in gates:
        if gate.status == Gate.Status.APPROVED:
            continue
        have = sum(1 for a in gate.approvals.all()
                   if not a.withdrawn_at and a.decision == Approval.Decision.APPROVED)
        people = {p.id for p in eligible.get(gate.pk, ())}
        seats += [(gate, people)] * max(0, gate.required - have)
    owner: dict[int, int] = {}  # person -> seat index

    def assign(seat: int, seen: set[int]) -> bool:
        for person in seats[seat][1]:
            if person in seen:
                continue
            seen.add(person)
            if person not in owner or assign(owner[person], seen):
                owner[person] = seat
                return True
        return False

    short: dict[int, Gate] = {}
    for index, (gate, _) in enumerate(seats):
        if not assign(index, set()):
            short[gate.pk] = gate
    return [Blocker("gate_unsatisfiable",
                    f"nobody is left to decide the {gate.get_role_display()} gate: the "
                    "requester, the release's authors and mergers, their delegates, and "
                    "people deciding other gates may not; ask an administrator to grant it "
                    "or delegate it")
            for gate in short.values()]
