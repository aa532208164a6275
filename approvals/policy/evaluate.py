"""The policy's answer for one change at one moment: a pure function of a document and
the facts of a decision, with no database access, so a decision can be re-checked
later and history replayed fast (docs/policies.md).

``evaluate(document, facts) -> outcome``

The facts (a plain JSON-able dict; keys marked optional may be left out)::

    {
      "at": "2026-12-04T13:05:00+00:00",   # the moment of the decision (ISO 8601, UTC
                                           # or with an offset): submission or start
      "action": "submit",                  # optional: "submit" (default), "start",
                                           # "rollback"
      "change": {
        "id": 42,                          # optional: the change's id, for reports
        "environment": "production",       # environment slug
        "change_type": "standard",         # standard | hotfix | emergency
        "applications": ["payments"],      # slugs of the applications it touches
        "risk_score": 74,                  # optional: 0-100, null when not scored
        "risk": "high",                    # optional: the requester's estimate or ""
        "requester": "engineer",           # optional: username
        "requester_groups": ["engineers"], # optional
        "on_call": true,                   # optional: an on-call engineer is named
        "rollback_plan": true,             # optional: a rollback plan is written
        "promoted": true,                  # optional: the release succeeded in the
                                           # environment before this one
        "conflicts": ["overlap"]           # optional: codes of the conflicts found
      },
      "actor": {                           # optional: who starts or rolls back
        "username": "oncall",
        "groups": ["operators"]
      }
    }

Missing optional facts take safe values: no conflicts, no groups, a risk score of
null (no threshold reached), and ``on_call``, ``rollback_plan`` and ``promoted`` count
as given, so a submission's facts need not say what only a start checks.

CEL conditions (``rules[].when``, ``start_restrictions[].when``) see these variables:
``change`` (the change facts above, optional keys filled in; an unscored change's
``risk_score`` reads -1, since CEL compares nothing with null), ``actor`` (``username``,
``groups``), ``action``, and ``local``: the moment in the environment's time zone as
``{"weekday": "friday", "hour": 13, "minute": 5, "time": "13:05",
"date": "2026-12-04"}``.

The outcome::

    {
      "environment": "production", "change_type": "standard",
      "policy_found": true,              # the document has a policy for this pair
      "gates": {"cab": 2, "security": 1},  # role -> approvals required
      "rules": ["payments-security"],    # names of the rules whose condition held
      "conditions": {"requires_window": true, ..., "approve_within_hours": null,
                     "execute_within_days": 7},
      "blockers": [{"code": "outside_window", "reason": "..."}],
      "start": {"allowed": false, "why": ["..."]},
      "may_deploy": true,                # null without an actor
      "may_roll_back": false             # null without an actor
    }

Each condition is compiled once per document and remembers its result per value of the
variables it reads (``document.Condition``), so replaying 20,000 decisions takes a couple
of seconds.

Blockers are what would stop a start at ``at`` (codes in ``document.BLOCKER_CODES``);
they are computed whatever the action, so a submission's outcome says whether it could
start then. ``start.allowed`` is true when there is none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import celpy
from celpy import celtypes

from approvals import schedule
from approvals.policy.document import WEEKDAYS, Condition, Document

CONDITIONS = ("requires_window", "requires_promotion", "requires_on_call",
              "requires_rollback_plan", "passes_freeze", "opens_review", "conflicts_block")
LIMITS = ("approve_within_hours", "execute_within_days")
_CHANGE_DEFAULTS = {"id": None, "environment": "", "change_type": "standard",
                    "applications": [], "risk_score": None, "risk": "", "requester": "",
                    "requester_groups": [], "on_call": True, "rollback_plan": True,
                    "promoted": True, "conflicts": []}


class FactsInvalid(ValueError):
    """Facts the evaluator cannot read (a missing ``at`` or environment, say)."""


def _moment(value) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise FactsInvalid(f"facts.at: {value!r} is not an ISO 8601 instant") from exc
    if moment.tzinfo is None:
        raise FactsInvalid("facts.at: the instant needs a time zone (Z or an offset)")
    return moment


def _local(moment: datetime, zone: str) -> dict:
    local = moment.astimezone(ZoneInfo(zone))
    return {"weekday": WEEKDAYS[local.weekday()], "hour": local.hour, "minute": local.minute,
            "time": f"{local:%H:%M}", "date": local.date().isoformat()}


class _Activation:
    """The CEL variables, converted once and only when a condition is not remembered."""

    def __init__(self, variables: dict) -> None:
        self.variables = variables
        self._cel = None

    @property
    def cel(self):
        if self._cel is None:
            self._cel = celpy.json_to_cel(self.variables)
        return self._cel


def _holds(condition: Condition, activation: _Activation) -> tuple[bool, str]:
    """(condition held, error text); an error counts as not held, and is reported."""
    key = condition.key(activation.variables)
    remembered = condition.memo.get(key)
    if remembered is not None:
        return remembered
    result = _run(condition.program, activation.cel)
    condition.remember(key, result)
    return result


def _run(program, activation) -> tuple[bool, str]:
    try:
        result = program.evaluate(activation)
    except celpy.CELEvalError as exc:
        return False, str(exc.args[0] if exc.args else exc)[:200]
    except (TypeError, ValueError, KeyError) as exc:
        return False, str(exc)[:200]
    if isinstance(result, celpy.CELEvalError):
        return False, str(result.args[0] if result.args else result)[:200]
    if not isinstance(result, bool | celtypes.BoolType):
        return False, f"the condition gave {type(result).__name__}, not a boolean"
    return bool(result), ""


def facts_change(facts: dict) -> dict:
    """The change facts with their optional keys filled in."""
    change = facts.get("change")
    if not isinstance(change, dict):
        raise FactsInvalid("facts.change: expected a mapping")
    filled = {**_CHANGE_DEFAULTS, **{k: v for k, v in change.items() if v is not None
                                     or k == "risk_score"}}
    if not filled["environment"]:
        raise FactsInvalid("facts.change.environment: required")
    for key in ("environment", "change_type", "risk", "requester"):
        if not isinstance(filled[key], str):
            raise FactsInvalid(f"facts.change.{key}: expected text")
    score = filled["risk_score"]
    if score is not None and (isinstance(score, bool) or not isinstance(score, int)):
        raise FactsInvalid("facts.change.risk_score: expected a whole number or null")
    for key in ("applications", "requester_groups", "conflicts"):
        if not isinstance(filled[key], list):
            raise FactsInvalid(f"facts.change.{key}: expected a list")
    return filled


def evaluate(document: Document, facts: dict) -> dict:
    """The outcome of ``document`` for ``facts`` (shapes in the module's docstring)."""
    change = facts_change(facts)
    at = _moment(facts.get("at"))
    action = facts.get("action") or "submit"
    actor = facts.get("actor")
    slug, kind = change["environment"], change["change_type"]
    env = document.environment(slug) or {}
    policy = (env.get("change_types") or {}).get(kind)
    found = policy is not None
    blockers: list[dict] = []
    if not found:
        blockers.append({"code": "no_policy",
                         "reason": f"the policy has no rule for {kind} changes to {slug}"})
        policy = {}
    gates = dict(policy.get("gates") or {})
    conditions = {name: bool(policy.get(name)) for name in CONDITIONS}
    conditions.update({name: policy.get(name) for name in LIMITS})
    score, threshold = change["risk_score"], policy.get("risk_threshold")
    if threshold is not None and score is not None and score >= threshold:
        role = policy["risk_extra_gate"]
        gates[role] = max(gates.get(role, 0), 1)
    zone = document.timezone(slug)
    actor_facts = {"username": "", "groups": []}
    if isinstance(actor, dict):
        actor_facts.update({k: v for k, v in actor.items() if v is not None})
        if not isinstance(actor_facts["groups"], list):
            raise FactsInvalid("facts.actor.groups: expected a list")
    # CEL compares nothing with null, so an unscored change reads as -1 there.
    seen = {**change, "risk_score": -1 if score is None else score}
    activation = _Activation({"change": seen, "actor": actor_facts, "action": action,
                              "local": _local(at, zone)})
    matched = []
    for rule, program in document.rules:
        held, error = _holds(program, activation)
        if error:
            blockers.append({"code": "policy_error",
                             "reason": f"rule {rule['name']}: {error}"})
        if held:
            matched.append(rule["name"])
            for role, count in rule["gates"].items():
                gates[role] = max(gates.get(role, 0), count)
    blockers += _start_blockers(document, change, conditions, at, activation, slug)
    may_deploy = may_roll_back = None
    if isinstance(actor, dict):
        groups = set(actor_facts.get("groups") or [])
        may_deploy = bool(groups & set(env.get("deploy") or []))
        may_roll_back = bool(groups & set(env.get("rollback") or []))
        permitted = {"start": may_deploy, "rollback": may_roll_back}.get(action, True)
        if not permitted:
            blockers.append({"code": "not_permitted",
                             "reason": f"{actor_facts.get('username') or 'the actor'} is in "
                                       f"no group that may {action} in {slug}"})
    return {
        "environment": slug, "change_type": kind, "policy_found": found,
        "gates": {role: gates[role] for role in sorted(gates)},
        "rules": matched,
        "conditions": conditions,
        "blockers": blockers,
        "start": {"allowed": not blockers, "why": [b["reason"] for b in blockers]},
        "may_deploy": may_deploy,
        "may_roll_back": may_roll_back,
    }


def _start_blockers(document: Document, change: dict, conditions: dict, at: datetime,
                    activation, slug: str) -> list[dict]:
    blockers = []
    if conditions["requires_on_call"] and not change["on_call"]:
        blockers.append({"code": "on_call_missing", "reason": "name the on-call engineer"})
    if conditions["requires_rollback_plan"] and not change["rollback_plan"]:
        blockers.append({"code": "rollback_plan_missing",
                         "reason": "document the rollback plan"})
    if conditions["requires_promotion"] and not change["promoted"]:
        blockers.append({"code": "promotion", "reason": "the release has not yet succeeded "
                                                        "in the environment before this one"})
    windows, freezes = document.calendar.get(slug, ([], []))
    instant = at.astimezone(UTC)
    frozen = schedule.active_freeze(freezes, instant)
    if frozen and not conditions["passes_freeze"]:
        freeze, ends = frozen
        blockers.append({"code": "freeze", "reason": f"change freeze in {slug} until "
                                                     f"{ends:%Y-%m-%d %H:%M %Z}: {freeze.reason}"})
    if conditions["requires_window"] and not schedule.current_window(windows, instant):
        blockers.append({"code": "outside_window",
                         "reason": f"outside the maintenance windows of {slug}"})
    if conditions["conflicts_block"] and change["conflicts"]:
        blockers.append({"code": "conflict", "reason": "conflicts with "
                                                       + ", ".join(map(str, change["conflicts"]))})
    for item, program in document.restrictions:
        held, error = _holds(program, activation)
        if error:
            blockers.append({"code": "policy_error",
                             "reason": f"start restriction {item['name']}: {error}"})
        elif held:
            blockers.append({"code": "start_restricted",
                             "reason": f"{item['name']}: {item['reason']}"})
    return blockers


def example_failures(document: Document) -> list[str]:
    """Each shipped example whose outcome differs from what it expects, in plain words."""
    failures = []
    for i, example in enumerate(document.examples):
        label = f"example {i + 1} ({example['name']})"
        try:
            outcome = evaluate(document, example["facts"])
        except FactsInvalid as exc:
            failures.append(f"{label}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - an example never breaks the run
            failures.append(f"{label}: the facts cannot be evaluated ({exc})")
            continue
        expect = example["expect"]
        got = {"gates": outcome["gates"],
               "blockers": sorted(b["code"] for b in outcome["blockers"]),
               "start_allowed": outcome["start"]["allowed"], "rules": outcome["rules"],
               "may_deploy": outcome["may_deploy"], "may_roll_back": outcome["may_roll_back"]}
        wanted = {**expect}
        if "blockers" in wanted:
            wanted["blockers"] = sorted(wanted["blockers"])
        if "gates" in wanted:
            wanted["gates"] = {role: wanted["gates"][role] for role in sorted(wanted["gates"])}
        for key, value in wanted.items():
            if got[key] != value:
                failures.append(f"{label}: expected {key} {value}, got {got[key]}")
    return failures
