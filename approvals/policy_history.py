"""The facts of past decisions, as they stood, for replaying a policy over history
(docs/policies.md, backtest).

``past_changes(since, until)`` reads every change submitted in ``[since, until)`` with
what the policy saw of it at its submission and at its start, in a constant number of
queries whatever the number of changes:

- the change record: environment, change type, application, requester, on-call,
  rollback plan, status;
- the risk score kept at submission (``RiskAssessment``, trigger ``submitted``);
- the audited decisions (``change.submitted``, ``change.deploying``): the facts and the
  policy digest they recorded, when they recorded them, and who started and when. Each
  event read is checked against its own hash first: an event whose fields no longer
  match it is not trusted, and the change record speaks instead;
- the first deployment of the change, for who started it and when where the trail
  kept no start event (data loaded without the services);
- the requester's and the starter's groups, and the conflicts of the change's start
  with the other changes started around it (the kinds ``approvals.conflicts.detect``
  finds: the same application, a dependency, the same targets, the same on-call
  engineer).

Groups are read as they are now: the portal keeps no history of membership besides the
audited access changes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model

from approvals import conflicts as conflict_rules
from approvals.models import ChangeRequest, RiskAssessment
from audit.models import AuditEvent
from audit.trail import HASHED_FIELDS, compute_hash
from catalog.models import Application, Target
from deployments.models import Deployment

SUBMITTED, DEPLOYING = "change.submitted", "change.deploying"


@dataclass
class PastChange:
    """One change as the policy saw it; ``submit`` and ``start`` are evaluator facts
    (``approvals.policy.evaluate``), ``start`` None when it never started."""

    id: int
    environment: str
    change_type: str
    application: str
    status: str
    submitted_at: datetime
    started_at: datetime | None
    started_by: str
    submit: dict
    start: dict | None
    # The policy digests the audited decisions named (None: not recorded).
    submit_digest: str | None = None
    start_digest: str | None = None
    # Events read for this change whose fields no longer match their hash.
    untrusted: list[int] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return f"CR-{self.id}"


_CHANGE_FIELDS = ("id", "environment_id", "environment__slug", "change_type",
                  "release__application_id", "release__application__slug",
                  "requested_by_id", "requested_by__username", "on_call_id",
                  "on_call__username", "rollback_plan", "risk", "status", "submitted_at")


def _period(model_prefix: str, since: datetime, until: datetime) -> dict:
    return {f"{model_prefix}submitted_at__gte": since, f"{model_prefix}submitted_at__lt": until}


def _events(since: datetime, until: datetime) -> dict[tuple[str, int], dict]:
    """{(action, change id): the first verified event}, and the ids of untrusted ones
    under the key ("untrusted", change id)."""
    rows = (AuditEvent.objects.filter(action__in=(SUBMITTED, DEPLOYING),
                                      object_type="changerequest", occurred_at__gte=since)
            .order_by("id").values("id", "hash", *HASHED_FIELDS))
    found: dict = {}
    for row in rows.iterator(chunk_size=5000):
        try:
            change_id = int(row["object_id"])
        except ValueError:
            continue
        if compute_hash(row) != row["hash"]:
            found.setdefault(("untrusted", change_id), []).append(row["id"])
            continue
        found.setdefault((row["action"], change_id), row)
    return found


def _groups(user_ids: set[int]) -> dict[int, list[str]]:
    through = get_user_model().groups.through
    groups: dict[int, list[str]] = defaultdict(list)
    for user_id, name in (through.objects.filter(user_id__in=user_ids)
                          .values_list("user_id", "group__name")):
        groups[user_id].append(name)
    return {user_id: sorted(names) for user_id, names in groups.items()}


def _conflicts(rows: list[dict], starts: dict[int, datetime]) -> dict[int, list[str]]:
    """{change id: kinds of its conflicts}, for changes that started: each start
    occupies the hour the portal expects a deployment to take (``conflicts``); two
    queries (dependencies, target addresses)."""
    world = conflict_rules.World()
    world.depends = set(Application.depends_on.through.objects.values_list(
        "from_application_id", "to_application_id"))
    for app_id, env_id, address in (Target.objects.exclude(address="")
                                    .values_list("application_id", "environment_id",
                                                 "address")):
        world.addresses[(app_id, env_id)].add(address)
    facts = []
    for row in rows:
        start = starts.get(row["id"])
        if start is None:
            continue
        facts.append(conflict_rules.Facts(
            id=row["id"], change_type=row["change_type"],
            application_id=row["release__application_id"],
            application=row["release__application__slug"],
            environment_id=row["environment_id"], environment=row["environment__slug"],
            on_call_id=row["on_call_id"], on_call=row["on_call__username"] or "",
            window=conflict_rules.Window(start, start + conflict_rules.EXPECTED_DURATION,
                                         "scheduled")))
    facts.sort(key=lambda f: f.window.start)
    moments = [f.window.start for f in facts]
    span = conflict_rules.EXPECTED_DURATION
    found = {}
    for index, change in enumerate(facts):
        # Only changes starting within an hour either side can overlap its window.
        low = bisect_right(moments, change.window.start - span)
        high = bisect_left(moments, change.window.start + span)
        kinds = set()
        for other in facts[low:index] + facts[index + 1:high]:
            if change.window.overlaps(other.window):
                kinds.update(_kinds(change, other, world))
        found[change.id] = sorted(kinds)
    return found


def _kinds(change, other, world) -> set[str]:
    """The kinds of conflict ``conflicts.detect`` finds between two changes whose windows
    overlap, without the sentences it writes for people (most of its time over a
    long history)."""
    kinds = set()
    if other.environment_id == change.environment_id:
        if other.application_id == change.application_id:
            kinds.add(conflict_rules.SAME_APPLICATION)
        else:
            pair = (change.application_id, other.application_id)
            if pair in world.depends or pair[::-1] in world.depends:
                kinds.add(conflict_rules.DEPENDENCY)
            if (world.addresses.get((change.application_id, change.environment_id), set())
                    & world.addresses.get((other.application_id, other.environment_id),
                                          set())):
                kinds.add(conflict_rules.SAME_TARGETS)
    if change.on_call_id is not None and other.on_call_id == change.on_call_id:
        kinds.add(conflict_rules.ON_CALL)
    return kinds


def past_changes(since: datetime, until: datetime) -> list[PastChange]:
    """Every change submitted in ``[since, until)``, oldest first, with its facts at
    submission and at start (eight queries)."""
    rows = list(ChangeRequest.objects.filter(**_period("", since, until))
                .order_by("submitted_at", "id").values(*_CHANGE_FIELDS))
    scores = dict(RiskAssessment.objects.filter(
        trigger=RiskAssessment.Trigger.SUBMITTED, **_period("change__", since, until))
        .order_by("change_id", "created_at", "id").distinct("change_id")
        .values_list("change_id", "score"))
    events = _events(since, until)
    deployments = {d["change_id"]: d for d in (
        Deployment.objects.filter(kind=Deployment.Kind.DEPLOY, started_at__isnull=False,
                                  change_id__in=ChangeRequest.objects.filter(
                                      **_period("", since, until)).values("id"))
        .order_by("change_id", "started_at", "id").distinct("change_id")
        .values("change_id", "started_at", "started_by_id", "started_by__username"))}
    starts: dict[int, datetime] = {}
    starters: dict[int, tuple[str, int | None]] = {}
    for row in rows:
        event = events.get((DEPLOYING, row["id"]))
        if event is not None:
            starts[row["id"]] = event["occurred_at"]
            starters[row["id"]] = (event["actor_name"].split(" (token ")[0],
                                   event["actor_id"])
        elif row["id"] in deployments:
            deployment = deployments[row["id"]]
            starts[row["id"]] = deployment["started_at"]
            starters[row["id"]] = (deployment["started_by__username"] or "",
                                   deployment["started_by_id"])
    groups = _groups({r["requested_by_id"] for r in rows}
                     | {uid for _, uid in starters.values() if uid})
    conflicts = _conflicts(rows, starts)
    return [_past(row, scores, events, starts, starters, groups, conflicts) for row in rows]


def _past(row, scores, events, starts, starters, groups, conflicts) -> PastChange:
    change_id = row["id"]
    submitted = events.get((SUBMITTED, change_id))
    deploying = events.get((DEPLOYING, change_id))
    built = {
        "id": change_id, "environment": row["environment__slug"],
        "change_type": row["change_type"],
        "applications": [row["release__application__slug"]],
        "risk_score": scores.get(change_id), "risk": row["risk"] or "",
        "requester": row["requested_by__username"] or "",
        "requester_groups": groups.get(row["requested_by_id"], []),
        "on_call": row["on_call_id"] is not None,
        "rollback_plan": bool((row["rollback_plan"] or "").strip()),
        "conflicts": conflicts.get(change_id, []),
    }
    submit = _facts(submitted, built, row["submitted_at"], "submit")
    start = None
    if change_id in starts:
        username, user_id = starters[change_id]
        start = _facts(deploying, built, starts[change_id], "start")
        start.setdefault("actor", {"username": username,
                                   "groups": groups.get(user_id, []) if user_id else []})
    return PastChange(
        id=change_id, environment=row["environment__slug"], change_type=row["change_type"],
        application=row["release__application__slug"], status=row["status"],
        submitted_at=row["submitted_at"], started_at=starts.get(change_id),
        started_by=starters.get(change_id, ("", None))[0], submit=submit, start=start,
        submit_digest=((submitted or {}).get("after") or {}).get("policy_digest"),
        start_digest=((deploying or {}).get("after") or {}).get("policy_digest"),
        untrusted=events.get(("untrusted", change_id), []))


def _facts(event: dict | None, built: dict, at: datetime, action: str) -> dict:
    """The facts the audited decision recorded, completed from the change record; the
    record's alone when the trail kept none."""
    recorded = ((event or {}).get("after") or {}).get("policy_facts")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("change"), dict):
        return {"at": at.isoformat(), "action": action, "change": dict(built)}
    facts = {**recorded, "change": {**built, **recorded["change"]}}
    facts.setdefault("at", at.isoformat())
    facts.setdefault("action", action)
    return facts
