"""The policy document: parse, validate against a strict schema, digest, compile its
CEL conditions once (docs/policies.md).

A document is YAML. Unknown keys, duplicate keys and wrong types are refused with the
path of the offending value, so a typo never silently weakens a rule. Its digest is the
SHA-256 of its canonical text: the parsed document as JSON with sorted keys and no
spaces, so comments and layout do not change it, any change of meaning does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import celpy
import jsonschema
import yaml
from celpy.celparser import CELParseError
from lark import Tree

from core.errors import Invalid

ROLES = ["tech_lead", "qa", "cab", "security", "business", "emergency"]
CHANGE_TYPES = ["standard", "hotfix", "emergency"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
BLOCKER_CODES = ["no_policy", "on_call_missing", "rollback_plan_missing", "promotion", "freeze",
                 "outside_window", "conflict", "start_restricted", "not_permitted",
                 "policy_error"]
# The document's own defaults for a policy change when it names no gates.
DEFAULT_POLICY_CHANGE_GATES = {"cab": 1, "security": 1}

_GATES = {"type": "object", "propertyNames": {"enum": ROLES},
          "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 20}}
_HOURS = {"type": ["integer", "null"], "minimum": 1, "maximum": 32767}
_CONDITION = {"type": "string", "minLength": 1}
_NAME = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_.-]{0,79}$"}
_CLOCK = {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"}
_INSTANT = {"type": "string", "format": "date-time",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?(\.\d+)?(Z|[+-]\d{2}:\d{2})$"}
_GROUPS = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
_CHANGE_TYPE_POLICY = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "gates": _GATES,
        "requires_window": {"type": "boolean"},
        "requires_promotion": {"type": "boolean"},
        "requires_on_call": {"type": "boolean"},
        "requires_rollback_plan": {"type": "boolean"},
        "passes_freeze": {"type": "boolean"},
        "opens_review": {"type": "boolean"},
        "conflicts_block": {"type": "boolean"},
        "approve_within_hours": _HOURS,
        "execute_within_days": _HOURS,
        "risk_threshold": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        "risk_extra_gate": {"enum": [*ROLES, None]},
    },
}
_ENVIRONMENT = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "timezone": {"type": "string", "minLength": 1},
        "deploy": _GROUPS,
        "rollback": _GROUPS,
        "change_types": {"type": "object", "propertyNames": {"enum": CHANGE_TYPES},
                         "additionalProperties": _CHANGE_TYPE_POLICY},
        "windows": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["weekday", "start", "end"],
            "properties": {"weekday": {"enum": WEEKDAYS}, "start": _CLOCK, "end": _CLOCK,
                           "timezone": {"type": "string", "minLength": 1}}}},
        "freezes": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["starts_at", "ends_at", "reason"],
            "properties": {"starts_at": _INSTANT, "ends_at": _INSTANT,
                           "recurs_yearly": {"type": "boolean"},
                           "reason": {"type": "string", "minLength": 1, "maxLength": 300}}}},
    },
}
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["policy", "environments"],
    "properties": {
        "policy": {"const": 1, "description": "the format of the document"},
        "description": {"type": "string"},
        "timezone": {"type": "string", "minLength": 1},
        "environments": {"type": "object",
                         "propertyNames": {"pattern": r"^[-a-zA-Z0-9_]+$"},
                         "additionalProperties": _ENVIRONMENT},
        "rules": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "when", "gates"],
            "properties": {"name": _NAME, "when": _CONDITION, "gates": _GATES,
                           "reason": {"type": "string"}}}},
        "start_restrictions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "when", "reason"],
            "properties": {"name": _NAME, "when": _CONDITION,
                           "reason": {"type": "string", "minLength": 1}}}},
        "policy_changes": {"type": "object", "additionalProperties": False,
                           "properties": {"gates": _GATES}},
        "examples": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "facts", "expect"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "facts": {"type": "object"},
                "expect": {"type": "object", "additionalProperties": False,
                           "minProperties": 1,
                           "properties": {
                               "gates": _GATES,
                               "blockers": {"type": "array",
                                            "items": {"enum": BLOCKER_CODES}},
                               "start_allowed": {"type": "boolean"},
                               "rules": {"type": "array", "items": {"type": "string"}},
                               "may_deploy": {"type": "boolean"},
                               "may_roll_back": {"type": "boolean"},
                           }}}}},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


class PolicyInvalid(Invalid):
    """A document that cannot be read: ``problems`` lists each as "path: message"."""

    code = "invalid"  # as every 400 with fields: the problems are under fields.document

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the policy document is not valid: " + "; ".join(problems),
                         fields={"document": problems})


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps (instants stay strings, checked by the
    schema) and refusing a key given twice (the second would silently win)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be text, not {type(key).__name__} "
                            f"(line {mark.line + 1}; quote it)", mark)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (line {mark.line + 1})", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass(frozen=True)
class Document:
    """A valid policy document with its CEL programs compiled once."""

    text: str
    data: dict
    digest: str
    rules: list = field(repr=False)  # [(rule dict, Condition)]
    restrictions: list = field(repr=False)  # [(restriction dict, Condition)]
    calendar: dict = field(repr=False)  # {environment slug: (windows, freezes)}

    def environment(self, slug: str) -> dict | None:
        return self.data["environments"].get(slug)

    def timezone(self, slug: str) -> str:
        env = self.environment(slug) or {}
        return env.get("timezone") or self.data.get("timezone") or "UTC"

    @property
    def policy_change_gates(self) -> dict[str, int]:
        return dict((self.data.get("policy_changes") or {}).get("gates")
                    or DEFAULT_POLICY_CHANGE_GATES)

    @property
    def examples(self) -> list[dict]:
        return list(self.data.get("examples") or [])


def canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_of(data: dict) -> str:
    return hashlib.sha256(canonical(data).encode()).hexdigest()


def _path(error: jsonschema.ValidationError) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "document" + "".join(parts)


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(set(error.instance) - set(known))
        return (f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}; "
                f"allowed: {', '.join(known)}")
    if error.validator == "enum":
        allowed = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        return f"{error.instance!r} is not one of {allowed}"
    if error.validator == "pattern" and error.schema is _CLOCK:
        return f"{error.instance!r} is not a time of day written \"HH:MM\" (quote it)"
    if error.validator == "pattern" and error.schema is _INSTANT:
        return f"{error.instance!r} is not an instant like \"2026-12-24T00:00:00Z\""
    return error.message


_ENV = celpy.Environment()


_MISSING = "\u0000missing"
_MEMO_SIZE = 4096


def _references(tree) -> tuple[tuple[str, ...], ...]:
    """The variables a condition reads: ``(name,)`` or ``(name, attribute)`` for
    ``name.attribute``. A condition's result depends on these values only, so it is
    remembered per distinct value (replaying history evaluates few distinct ones)."""
    found: set[tuple[str, ...]] = set()

    def walk(node, parents):
        if not isinstance(node, Tree):
            return
        if node.data == "ident" and node.children:
            name = str(node.children[0])
            dotted = (len(parents) >= 3 and parents[-1].data == "primary"
                      and parents[-2].data == "member" and parents[-3].data == "member_dot"
                      and parents[-3].children[0] is parents[-2])
            found.add((name, str(parents[-3].children[1])) if dotted else (name,))
        for child in node.children:
            walk(child, [*parents, node])

    walk(tree, [])
    return tuple(sorted(found))


@dataclass(eq=False)
class Condition:
    """A compiled CEL condition, with the results it gave per value of what it reads."""

    program: object
    refs: tuple[tuple[str, ...], ...]
    memo: dict = field(default_factory=dict)

    def key(self, variables: dict) -> str:
        values = []
        for ref in self.refs:
            value = variables.get(ref[0], _MISSING)
            if len(ref) == 2:
                value = value.get(ref[1], _MISSING) if isinstance(value, dict) else _MISSING
            values.append(value)
        return json.dumps(values, sort_keys=True, default=str)

    def remember(self, key: str, result: tuple[bool, str]) -> None:
        if len(self.memo) >= _MEMO_SIZE:
            self.memo.clear()
        self.memo[key] = result


def _program(expression: str, where: str, problems: list[str]):
    try:
        tree = _ENV.compile(expression)
        return Condition(program=_ENV.program(tree), refs=_references(tree))
    except CELParseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        problems.append(f"{where}.when: not a valid CEL expression ({first})")
    except Exception as exc:  # noqa: BLE001 - cel-python raises several kinds
        problems.append(f"{where}.when: not a valid CEL expression ({exc})")
    return None


def _semantic_problems(data: dict) -> list[str]:
    problems = []
    zones = [("document.timezone", data.get("timezone"))]
    for slug, env in data["environments"].items():
        zones.append((f"document.environments.{slug}.timezone", env.get("timezone")))
        for i, window in enumerate(env.get("windows") or []):
            zones.append((f"document.environments.{slug}.windows[{i}].timezone",
                          window.get("timezone")))
            if window["start"] == window["end"]:
                problems.append(f"document.environments.{slug}.windows[{i}]: a window "
                                "that starts when it ends is empty")
        for i, freeze in enumerate(env.get("freezes") or []):
            if _instant(freeze["ends_at"]) <= _instant(freeze["starts_at"]):
                problems.append(f"document.environments.{slug}.freezes[{i}]: ends_at must "
                                "be after starts_at")
        for kind, policy in (env.get("change_types") or {}).items():
            if (policy.get("risk_threshold") is None) != (not policy.get("risk_extra_gate")):
                problems.append(f"document.environments.{slug}.change_types.{kind}: "
                                "risk_threshold and risk_extra_gate go together")
    for where, zone in zones:
        if zone is None:
            continue
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{where}: unknown time zone {zone!r}")
    for key in ("rules", "start_restrictions"):
        names = [item["name"] for item in data.get(key) or []]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"document.{key}: the name {name!r} is used twice")
    return problems


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Window:
    """A weekly window, shaped as ``approvals.schedule`` reads one."""

    weekday: int
    start_time: time
    end_time: time
    timezone: str


@dataclass(frozen=True)
class FreezeSpan:
    """A freeze, shaped as ``approvals.schedule`` reads one."""

    starts_at: datetime
    ends_at: datetime
    recurs_yearly: bool
    reason: str


def _calendar(data: dict) -> dict[str, tuple[list[Window], list[FreezeSpan]]]:
    calendar = {}
    for slug, env in data["environments"].items():
        zone = env.get("timezone") or data.get("timezone") or "UTC"
        windows = [Window(weekday=WEEKDAYS.index(w["weekday"]),
                          start_time=time.fromisoformat(w["start"]),
                          end_time=time.fromisoformat(w["end"]),
                          timezone=w.get("timezone") or zone)
                   for w in env.get("windows") or []]
        freezes = [FreezeSpan(starts_at=_instant(f["starts_at"]), ends_at=_instant(f["ends_at"]),
                              recurs_yearly=bool(f.get("recurs_yearly")), reason=f["reason"])
                   for f in env.get("freezes") or []]
        calendar[slug] = (windows, freezes)
    return calendar


_CACHE: OrderedDict[str, Document] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def parse(text: str) -> Document:
    """The valid document ``text`` holds, or ``PolicyInvalid`` listing every problem.

    Parsed documents are kept by their text (a few), so replaying history or evaluating
    every decision compiles each document's CEL once."""
    if not isinstance(text, str):
        raise PolicyInvalid(["document: expected the YAML text of a policy document"])
    with _CACHE_LOCK:
        cached = _CACHE.get(text)
        if cached is not None:
            _CACHE.move_to_end(text)
            return cached
    try:
        document = _parse(text)
    except RecursionError as exc:
        raise PolicyInvalid(["document: nested too deeply"]) from exc
    with _CACHE_LOCK:
        _CACHE[text] = document
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return document


def _parse(text: str) -> Document:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise PolicyInvalid([f"document: not valid YAML ({exc})".replace("\n", " ")]) from exc
    if not isinstance(data, dict):
        raise PolicyInvalid(["document: expected a mapping with keys policy, environments, "
                             "rules, start_restrictions, policy_changes, examples"])
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise PolicyInvalid([f"{_path(e)}: {_message(e)}" for e in errors])
    problems = _semantic_problems(data)
    rules = [(rule, _program(rule["when"], f"document.rules[{i}]", problems))
             for i, rule in enumerate(data.get("rules") or [])]
    restrictions = [(item, _program(item["when"], f"document.start_restrictions[{i}]",
                                    problems))
                    for i, item in enumerate(data.get("start_restrictions") or [])]
    if problems:
        raise PolicyInvalid(problems)
    return Document(text=text, data=data, digest=digest_of(data), rules=rules,
                    restrictions=restrictions, calendar=_calendar(data))
