"""Backtest: replay a proposed policy document over the changes of the last months, with
their facts at the time (``approvals.policy_history``), beside the version that was in
force then, and report what would have differed (docs/policies.md, backtest):

- ``gates``: the gates the submission would have set (active -> proposed);
- ``blockers``: what would have stood in the way at the start, added or removed;
- ``start``: a start the proposed document would have refused, or one the active
  refused that it would have let through; for a refused start, the earliest moment
  within a week after it that the proposed document allows (``start.earliest``).

The evaluator is pure (``approvals.policy.evaluate``); each document's CEL programs are
compiled once (``document.parse``) and each program's answer is kept for the facts it
reads, so replaying twenty thousand changes evaluates few distinct conditions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import celpy
from celpy import celtypes

from approvals import schedule
from approvals.models import PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.evaluate import evaluate, facts_change
from approvals.policy_history import PastChange, past_changes
from audit.permissions import is_auditor
from catalog.permissions import environment_permissions
from core import clock

MAX_MONTHS = 24
MAX_DOCUMENT = 200_000  # characters, as a proposal takes
MAX_LISTED = 2000  # differences listed; the counts cover them all
TIME_CODES = {"outside_window", "freeze", "start_restricted"}
SEARCH_STEP = timedelta(minutes=30)
SEARCH_SPAN = timedelta(days=7)
SEARCH_BUDGET = 20_000  # evaluations spent looking for the earliest allowed start
WEEKDAYS = policy_document.WEEKDAYS
VARIABLES = ("change", "actor", "local", "action")
_READS = re.compile(r"\b(change|actor|local|action)\b(?:\s*\.\s*([A-Za-z_]\w*))?")


# Who may replay a document over history: it shows every change's facts, so those who
# read the whole trail (auditors, admins), who propose policy versions, and who decide
# them (CAB and security, in any environment).
PROPOSE_PERMISSION = "approvals.add_policyversion"
DECIDES_POLICY = {"approve_cab", "approve_security"}


def may_backtest(user) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    if user.is_superuser or is_auditor(user) or user.has_perm(PROPOSE_PERMISSION):
        return True
    return any(held & DECIDES_POLICY for held in environment_permissions(user).values())


def months_before(moment: datetime, months: int) -> datetime:
    """The same moment ``months`` calendar months earlier (the last day of a shorter
    month when the day does not exist there)."""
    month = moment.month - 1 - months
    year, month = moment.year + month // 12, month % 12 + 1
    for day in range(moment.day, 27, -1):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return moment.replace(year=year, month=month, day=min(moment.day, 28))


def _reads(expression: str) -> tuple:
    """What a CEL expression reads: (variable, field or None for all of it)."""
    found = set()
    for variable, name in _READS.findall(expression):
        found.add((variable, name or None))
    whole = {v for v, n in found if n is None}
    return tuple(sorted(((v, n) for v, n in found if n is None or v not in whole),
                        key=lambda item: (item[0], item[1] or "")))


def _frozen(value):
    """A hashable form of a JSON-like value, the same for plain Python values and for
    the CEL values the evaluator makes of them."""
    if isinstance(value, bool | celtypes.BoolType):
        return ("b", bool(value))
    if isinstance(value, int):
        return ("i", int(value))
    if isinstance(value, float):
        return ("f", float(value))
    if isinstance(value, str):
        return ("s", str(value))
    if isinstance(value, dict):
        return ("m", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("l", tuple(_frozen(v) for v in value))
    return ("n",)


def _project(activation, reads: tuple) -> tuple:
    key = []
    for variable, name in reads:
        value = activation.get(variable)
        if name is not None:
            # dict.get: a CEL map's own get raises for a missing key.
            value = dict.get(value, name) if isinstance(value, dict) else None
        key.append(_frozen(value))
    return tuple(key)


class _Remembered:
    """A compiled CEL program whose answers are kept by the values it reads."""

    def __init__(self, program, expression: str) -> None:
        self.program, self.reads, self.answers = program, _reads(expression), {}

    def _answer(self, key, activation):
        if key not in self.answers:
            try:
                self.answers[key] = (True, self.program.evaluate(activation))
            except Exception as exc:  # noqa: BLE001 - kept and raised again, as given
                self.answers[key] = (False, exc)
        return self.answers[key]

    def _needed(self, plain: dict) -> dict:
        """Only what the expression reads (converting all of the facts to CEL values
        costs more than evaluating most conditions)."""
        needed: dict = {}
        for variable, name in self.reads:
            value = plain.get(variable)
            if name is None or not isinstance(value, dict):
                needed[variable] = value
            elif name in value:
                needed.setdefault(variable, {})[name] = value[name]
            else:
                needed.setdefault(variable, {})
        return needed

    def evaluate(self, activation):
        ok, value = self._answer(_project(activation, self.reads), activation)
        if not ok:
            raise value
        return value

    def answer_for(self, plain: dict) -> tuple:
        """The kept answer for plain (not yet CEL) values, as a hashable summary."""
        key = _project(plain, self.reads)
        if key not in self.answers:
            self._answer(key, celpy.json_to_cel(self._needed(plain)))
        ok, value = self.answers[key]
        if ok and isinstance(value, bool | celtypes.BoolType):
            return ("b", bool(value))
        return ("e", repr(value)[:200])


class Replayer:
    """One document, evaluated over many facts. Whole outcomes are kept by what they
    depend on: the environment and change type, whether the risk score reaches the
    threshold, the start conditions and conflicts, the actor's groups that may act (and
    its name where it may not), whether a window is open and which freeze holds, and
    the answer of each condition (itself kept by the values it reads). A test holds
    this equal to ``evaluate`` on varied facts."""

    def __init__(self, document: policy_document.Document) -> None:
        self.document = document
        # The document's compiled programs (a condition object carries its own), with
        # answers kept here by the values each reads; the document is left as it is.
        self.programs = [_Remembered(getattr(p, "program", p), item["when"])
                         for item, p in document.rules + document.restrictions]
        self.outcomes: dict = {}
        self.zones: dict[str, ZoneInfo] = {}
        self.evaluations = 0

    def _zone(self, slug: str) -> ZoneInfo:
        name = self.document.timezone(slug)
        zone = self.zones.get(name)
        if zone is None:
            zone = self.zones[name] = ZoneInfo(name)
        return zone

    def _conditions(self, change: dict, actor: dict, action: str, at: datetime) -> tuple:
        if not self.programs:
            return ()
        local = at.astimezone(self._zone(change["environment"]))
        score = change["risk_score"]
        plain = {"change": {**change, "risk_score": -1 if score is None else score},
                 "actor": actor, "action": action,
                 "local": {"weekday": WEEKDAYS[local.weekday()], "hour": local.hour,
                           "minute": local.minute, "time": f"{local:%H:%M}",
                           "date": local.date().isoformat()}}
        return tuple(p.answer_for(plain) for p in self.programs)

    def evaluate(self, facts: dict, at: datetime) -> dict:
        change = facts_change(facts)
        slug, kind = change["environment"], change["change_type"]
        action = facts.get("action") or "submit"
        env = self.document.environment(slug) or {}
        policy = (env.get("change_types") or {}).get(kind) or {}
        threshold, score = policy.get("risk_threshold"), change["risk_score"]
        actor = {"username": "", "groups": []}
        given = facts.get("actor")
        if isinstance(given, dict):
            actor.update({k: v for k, v in given.items() if v is not None})
            groups = set(actor.get("groups") or [])
            may = {"start": set(env.get("deploy") or []),
                   "rollback": set(env.get("rollback") or [])}
            acting = (tuple(sorted(groups & may["start"])),
                      tuple(sorted(groups & may["rollback"])))
            refused = action in may and not groups & may[action]
            who = (True, acting, actor.get("username") if refused else None)
        else:
            who = (False,)
        windows, freezes = self.document.calendar.get(slug, ([], []))
        instant = at.astimezone(UTC)
        frozen = schedule.active_freeze(freezes, instant) if freezes else None
        key = (action, slug, kind,
               threshold is not None and score is not None and score >= threshold,
               bool(change["on_call"]), bool(change["rollback_plan"]),
               bool(change["promoted"]), _frozen(change["conflicts"]), who,
               # Windows matter only where the policy asks for one.
               bool(policy.get("requires_window")) and bool(windows)
               and schedule.current_window(windows, instant) is not None,
               frozen and (frozen[0].reason, frozen[1]),
               self._conditions(change, actor, action, at))
        outcome = self.outcomes.get(key)
        if outcome is None:
            self.evaluations += 1
            outcome = self.outcomes[key] = evaluate(self.document, {**facts,
                                                                    "at": at.isoformat()})
        return outcome


def _codes(outcome: dict) -> dict[str, str]:
    return {b["code"]: b["reason"] for b in outcome["blockers"]}


@dataclasses.dataclass
class _Versions:
    """The versions that were ever in force, to find the one of a moment."""

    by_digest: dict
    spans: list  # [(activated_at, closed_at or None, version)]
    first: PolicyVersion | None

    @classmethod
    def read(cls) -> _Versions:
        versions = list(PolicyVersion.objects.order_by("number"))
        spans = [(v.activated_at, v.closed_at, v) for v in versions if v.activated_at
                 and v.status in (PolicyVersion.Status.ACTIVE,
                                  PolicyVersion.Status.SUPERSEDED)]
        by_digest = {}
        for version in versions:
            by_digest.setdefault(version.digest, version)
        return cls(by_digest=by_digest, spans=spans,
                   first=spans[0][2] if spans else (versions[0] if versions else None))

    def at(self, moment: datetime, digest: str | None) -> tuple[PolicyVersion | None, str]:
        """(version, how it was found): named by the audited decision, in force by its
        activation time, or the first version (history older than the versions)."""
        if digest and digest in self.by_digest:
            return self.by_digest[digest], "recorded"
        for activated, closed, version in self.spans:
            if activated <= moment and (closed is None or moment < closed):
                return version, "in_force"
        return self.first, "first_version"


def backtest(text: str, *, months: int, now: datetime | None = None) -> dict:
    """What ``text`` would have changed over the changes submitted in the last
    ``months`` months. Raises ``PolicyInvalid`` for a document that cannot be read."""
    proposed = policy_document.parse(text)
    if not 1 <= months <= MAX_MONTHS:
        raise ValueError(f"months must be between 1 and {MAX_MONTHS}")
    until = now or clock.now()
    since = months_before(until, months)
    versions = _Versions.read()
    replayers: dict[str, Replayer] = {proposed.digest: Replayer(proposed)}

    def replayer(version: PolicyVersion) -> Replayer:
        if version.digest not in replayers:
            replayers[version.digest] = Replayer(policy_document.parse(version.document))
        return replayers[version.digest]

    report = _Report(since=since, until=until, proposed=proposed)
    budget = [SEARCH_BUDGET]
    for past in past_changes(since, until):
        version, basis = versions.at(past.submitted_at, past.submit_digest)
        report.examined(past)
        if version is None:
            continue
        active = replayer(version)
        mine = replayers[proposed.digest]
        difference = _difference(past, version, basis, active, mine, versions, replayer,
                                 budget)
        if difference:
            report.add(past, difference)
    report.evaluations = sum(r.evaluations for r in replayers.values())
    return report.as_dict(versions.first is None)


def _difference(past: PastChange, version, basis, active: Replayer, mine: Replayer,
                versions: _Versions, replayer, budget: list[int]) -> dict | None:
    found: dict = {}
    before = active.evaluate(past.submit, past.submitted_at)
    after = mine.evaluate(past.submit, past.submitted_at)
    if before["gates"] != after["gates"]:
        found["gates"] = {"active": before["gates"], "proposed": after["gates"],
                          "rules": after["rules"]}
    errors = [b["reason"] for b in after["blockers"] if b["code"] == "policy_error"]
    start_version = version
    if past.start is not None:
        start_version, _ = versions.at(past.started_at, past.start_digest)
        then = replayer(start_version or version).evaluate(past.start, past.started_at)
        now = mine.evaluate(past.start, past.started_at)
        was, will = _codes(then), _codes(now)
        added = [{"code": c, "reason": will[c]} for c in will if c not in was]
        removed = [{"code": c, "reason": was[c]} for c in was if c not in will]
        if added or removed:
            found["blockers"] = {"added": added, "removed": removed}
        if then["start"]["allowed"] != now["start"]["allowed"]:
            found["start"] = {"active": then["start"]["allowed"],
                              "proposed": now["start"]["allowed"], "earliest": None}
            if not now["start"]["allowed"] and set(will) <= TIME_CODES:
                found["start"]["earliest"] = _earliest(past, mine, budget)
        errors += [b["reason"] for b in now["blockers"] if b["code"] == "policy_error"]
    if not found:
        return None
    return {**found, "errors": sorted(set(errors)),
            "active_version": version.number, "version_basis": basis,
            "start_version": start_version.number if start_version else None}


def _earliest(past: PastChange, mine: Replayer, budget: list[int]) -> str | None:
    """The first half hour within a week after the start at which the proposed document
    lets it start; None when none or the search budget is spent."""
    moment = past.started_at
    end = moment + SEARCH_SPAN
    while moment < end and budget[0] > 0:
        moment += SEARCH_STEP
        budget[0] -= 1
        if mine.evaluate(past.start, moment)["start"]["allowed"]:
            return moment.astimezone(UTC).isoformat()
    return None


class _Report:
    def __init__(self, *, since, until, proposed) -> None:
        self.since, self.until, self.proposed = since, until, proposed
        self.environments: dict[str, dict] = {}
        self.differences: list[dict] = []
        self.total = self.differing = self.evaluations = 0

    def _counts(self, slug: str) -> dict:
        return self.environments.setdefault(slug, {
            "changes": 0, "differing": 0, "gates": 0, "blocked": 0, "start_refused": 0,
            "start_allowed": 0})

    def examined(self, past: PastChange) -> None:
        self.total += 1
        self._counts(past.environment)["changes"] += 1

    def add(self, past: PastChange, difference: dict) -> None:
        self.differing += 1
        counts = self._counts(past.environment)
        counts["differing"] += 1
        counts["gates"] += "gates" in difference
        counts["blocked"] += bool(difference.get("blockers", {}).get("added"))
        start = difference.get("start")
        counts["start_refused"] += bool(start and not start["proposed"])
        counts["start_allowed"] += bool(start and start["proposed"])
        if len(self.differences) < MAX_LISTED:
            self.differences.append({
                "change": past.id, "reference": past.reference,
                "environment": past.environment, "change_type": past.change_type,
                "application": past.application, "status": past.status,
                "submitted_at": past.submitted_at.astimezone(UTC).isoformat(),
                "started_at": (past.started_at.astimezone(UTC).isoformat()
                               if past.started_at else None),
                "started_by": past.started_by or None,
                "kinds": [k for k in ("gates", "blockers", "start") if k in difference],
                **difference})

    def as_dict(self, no_versions: bool) -> dict:
        totals = {key: sum(c[key] for c in self.environments.values())
                  for key in ("gates", "blocked", "start_refused", "start_allowed")}
        return {
            "since": self.since.astimezone(UTC).isoformat(),
            "until": self.until.astimezone(UTC).isoformat(),
            "digest": self.proposed.digest,
            "counts": {"changes": self.total, "differing": self.differing, **totals,
                       "by_environment": dict(sorted(self.environments.items()))},
            "differences": self.differences,
            "truncated": self.differing > len(self.differences),
            "evaluations": self.evaluations,
            "note": ("the portal has no policy version: nothing to compare with"
                     if no_versions else ""),
        }


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
