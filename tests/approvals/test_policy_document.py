"""The policy document: strict validation with paths, digest, and the pure evaluator."""

from __future__ import annotations

import pytest
import yaml

from approvals.policy import document as policy_document
from approvals.policy.evaluate import evaluate, example_failures

BASE = """
policy: 1
timezone: Europe/London
environments:
  production:
    deploy: [operators]
    rollback: [operators, oncall]
    windows:
      - {weekday: tuesday, start: "22:00", end: "02:00"}
    freezes:
      - {starts_at: "2026-12-24T00:00:00Z", ends_at: "2026-12-27T00:00:00Z", reason: Holidays}
    change_types:
      standard:
        gates: {cab: 1, security: 1, business: 1}
        requires_window: true
        risk_threshold: 80
        risk_extra_gate: tech_lead
        conflicts_block: true
      emergency:
        gates: {emergency: 1}
        passes_freeze: true
rules:
  - name: payments-security
    when: '"payments" in change.applications'
    gates: {security: 1}
  - name: two-cab-above-70
    when: 'change.risk_score > 70'
    gates: {cab: 2}
start_restrictions:
  - name: no-friday-afternoon-production
    when: 'change.environment == "production" && local.weekday == "friday" && local.hour >= 12'
    reason: No Production start on Friday afternoon
"""


def facts(**change):
    at = change.pop("at", "2026-12-08T22:30:00+00:00")  # a Tuesday, in the window
    actor = change.pop("actor", None)
    action = change.pop("action", "submit")
    found = {"at": at, "action": action,
             "change": {"environment": "production", "change_type": "standard",
                        "applications": ["storefront"], "risk_score": 20, **change}}
    if actor:
        found["actor"] = actor
    return found


def test_a_valid_document_has_a_stable_digest_whatever_its_layout():
    first = policy_document.parse(BASE)
    again = policy_document.parse("# a comment\n" + BASE.replace("policy: 1", "policy:   1"))
    assert first.digest == again.digest and len(first.digest) == 64
    changed = policy_document.parse(BASE.replace("business: 1", "business: 2"))
    assert changed.digest != first.digest


@pytest.mark.parametrize(("text", "problem"), [
    (BASE.replace("    deploy:", "    deplyo: [x]\n    deploy:"),
     "document.environments.production: unknown key 'deplyo'"),
    (BASE.replace("        requires_window: true", "        requires_windows: true"),
     "document.environments.production.change_types.standard: unknown key 'requires_windows'"),
    (BASE.replace("gates: {cab: 1, security: 1, business: 1}", "gates: {cab: 1, boss: 1}"),
     "'boss' is not one of tech_lead, qa, cab, security, business, emergency"),
    (BASE.replace('start: "22:00"', "start: 22:00"),
     "document.environments.production.windows[0].start"),
    (BASE.replace("policy: 1\n", "policy: 1\nextra: true\n"), "document: unknown key 'extra'"),
    (BASE.replace("'\"payments\" in change.applications'", "'change.applications in'"),
     "document.rules[0].when: not a valid CEL expression"),
    (BASE.replace("timezone: Europe/London", "timezone: Mars/Olympus"),
     "document.timezone: unknown time zone 'Mars/Olympus'"),
    (BASE.replace("  - name: two-cab-above-70", "  - name: payments-security"),
     "document.rules: the name 'payments-security' is used twice"),
    (BASE + "timezone: UTC\n", "is given twice"),
    ("- just\n- a list\n", "document: expected a mapping"),
])
def test_a_document_with_a_mistake_is_refused_with_the_path_and_why(text, problem):
    with pytest.raises(policy_document.PolicyInvalid) as refused:
        policy_document.parse(text)
    assert refused.value.code == "invalid"
    assert any(problem in p for p in refused.value.problems), refused.value.problems


def test_gates_come_from_the_environment_and_type_then_risk_then_rules():
    doc = policy_document.parse(BASE)
    plain = evaluate(doc, facts())
    assert plain["gates"] == {"business": 1, "cab": 1, "security": 1}
    assert plain["rules"] == [] and plain["start"]["allowed"] is True
    risky = evaluate(doc, facts(risk_score=85))
    assert risky["gates"] == {"business": 1, "cab": 2, "security": 1, "tech_lead": 1}
    assert risky["rules"] == ["two-cab-above-70"]
    payments = evaluate(doc, facts(applications=["payments"],
                                   change_type="emergency"))
    assert payments["gates"] == {"emergency": 1, "security": 1}


def test_blockers_say_why_a_start_is_not_allowed():
    doc = policy_document.parse(BASE)
    friday = evaluate(doc, facts(at="2026-12-11T13:00:00+00:00"))  # Friday 13:00 London
    assert [b["code"] for b in friday["blockers"]] == ["outside_window", "start_restricted"]
    assert friday["start"]["allowed"] is False
    assert "No Production start on Friday afternoon" in friday["start"]["why"][1]
    morning = evaluate(doc, facts(at="2026-12-11T11:00:00+00:00", change_type="emergency"))
    assert morning["blockers"] == []
    frozen = evaluate(doc, facts(at="2026-12-25T10:00:00+00:00"))
    assert {"freeze", "outside_window"} <= {b["code"] for b in frozen["blockers"]}
    passes = evaluate(doc, facts(at="2026-12-25T10:00:00+00:00", change_type="emergency"))
    assert passes["blockers"] == []
    conflicting = evaluate(doc, facts(conflicts=["overlap"]))
    assert [b["code"] for b in conflicting["blockers"]] == ["conflict"]
    unknown = evaluate(doc, facts(change_type="hotfix"))
    assert unknown["policy_found"] is False and unknown["blockers"][0]["code"] == "no_policy"


def test_who_may_deploy_and_roll_back_comes_from_groups():
    doc = policy_document.parse(BASE)
    oncall = {"username": "oncall", "groups": ["oncall"]}
    start = evaluate(doc, facts(actor=oncall, action="start"))
    assert start["may_deploy"] is False and start["may_roll_back"] is True
    assert [b["code"] for b in start["blockers"]] == ["not_permitted"]
    rollback = evaluate(doc, facts(actor=oncall, action="rollback"))
    assert rollback["blockers"] == []
    assert evaluate(doc, facts())["may_deploy"] is None


def test_examples_that_fail_are_named_with_what_differed():
    text = BASE + """
examples:
  - name: payments need security
    facts: {at: "2026-12-08T22:30:00Z",
            change: {environment: production, change_type: emergency,
                     applications: [payments]}}
    expect: {gates: {emergency: 1, security: 1}, start_allowed: true}
  - name: wrong on purpose
    facts: {at: "2026-12-08T22:30:00Z", change: {environment: production}}
    expect: {gates: {cab: 1}}
"""
    failures = example_failures(policy_document.parse(text))
    assert len(failures) == 1
    assert failures[0].startswith("example 2 (wrong on purpose): expected gates {'cab': 1}")


def test_a_rule_holds_for_exactly_the_changes_its_condition_names_over_many_facts():
    # The evaluator remembers a condition's result per combination of the values it
    # reads (for replaying history; its speed is bench/policy_backtest_bench.py's):
    # remembering never carries one change's answer over to another.
    doc = policy_document.parse(BASE)
    many = [facts(risk_score=i % 100, applications=["payments"] if i % 7 == 0 else ["web"],
                  at=f"2026-12-{1 + i % 28:02d}T{i % 24:02d}:15:00+00:00")
            for i in range(2000)]
    outcomes = [evaluate(doc, f) for f in many]
    held = [i for i, o in enumerate(outcomes) if "payments-security" in o["rules"]]
    assert held == [i for i in range(2000) if i % 7 == 0]
    assert all(outcomes[i]["gates"].get("security") for i in held)


@pytest.mark.parametrize("change", [
    {"environment": "production", "risk_score": "high"},
    {"environment": "production", "applications": "payments"},
    {"environment": 7},
    {},
])
def test_facts_of_the_wrong_shape_fail_their_example_in_words(change):
    examples = [{"name": "odd facts", "facts": {"at": "2026-12-08T22:30:00Z", "change": change},
                 "expect": {"start_allowed": True}}]
    text = BASE + yaml.safe_dump({"examples": examples})
    failures = example_failures(policy_document.parse(text))
    assert len(failures) == 1 and failures[0].startswith("example 1 (odd facts): facts.")


def test_remembered_conditions_answer_as_a_fresh_evaluation_does():
    many = [facts(risk_score=i % 100, applications=["payments"] if i % 3 == 0 else ["web"],
                  at=f"2026-12-{1 + i % 28:02d}T{i % 24:02d}:15:00+00:00")
            for i in range(300)]
    warm = policy_document.parse(BASE)
    remembered = [evaluate(warm, f) for f in many]
    assert sum(len(c.memo) for _, c in warm.rules + warm.restrictions) < 300
    for f, outcome in zip(many, remembered, strict=True):
        fresh = policy_document.parse(BASE + f"# {f['at']} {f['change']['risk_score']}\n")
        assert evaluate(fresh, f) == outcome


@pytest.mark.parametrize(("text", "problem"), [
    ("policy: 1\n[1]: 2\nenvironments: {}\n", "a key must be text, not list"),
    ("policy: 1\nenvironments: {1: {}}\n", "a key must be text, not int"),
    ("x: " + "[" * 2000 + "]" * 2000, "document: nested too deeply"),
    ("policy: !!python/object/apply:os.system ['ls']\nenvironments: {}\n",
     "could not determine a constructor"),
])
def test_hostile_yaml_is_refused_as_invalid_never_run(text, problem):
    with pytest.raises(policy_document.PolicyInvalid) as refused:
        policy_document.parse(text)
    assert problem in refused.value.problems[0]
