"""The risk score of a change (0 to 100), explained factor by factor.

Pure: ``assess(change, facts=...)`` reads the change, its release and environment as
loaded, and the facts read in bulk for it (``approvals.risk_selectors.risk_facts``); it
queries nothing. Each factor scores ``points = weight x severity`` with a severity
between 0 and 1; the score is the sum, capped at 100 (docs/cab.md).

The weights (``WEIGHTS``) add up to 105 on purpose: a change that is the worst on
every count scores 100 even when one factor is not reported.

| factor | weight | severity 1 when | severity 0 when |
| --- | --- | --- | --- |
| change_type | 15 | emergency (hotfix 0.6) | standard |
| environment | 15 | production | any other environment |
| exposure | 15 | share of targets at the first step (blue-green 0.25) | - |
| migrations | 15 | an irreversible migration (contract 0.6) | expand migrations or none |
| failure_rate | 15 | 30 % or more of the app's deployments failed (90 days) | none failed |
| release_size | 10 | 50 commits or 200 files or more, as CI reports them | not reported |
| outside_window | 10 | production, not scheduled inside a maintenance window | not production |
| rollbacks | 10 | 3 or more rollbacks there in 30 days | none |
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.models import MigrationKind
from deployments.strategies import canary_phases

WEIGHTS: dict[str, int] = {
    "change_type": 15,
    "environment": 15,
    "exposure": 15,
    "migrations": 15,
    "failure_rate": 15,
    "release_size": 10,
    "outside_window": 10,
    "rollbacks": 10,
}
LABELS: dict[str, str] = {
    "change_type": "Change type",
    "environment": "Environment",
    "exposure": "Exposure at the first step",
    "migrations": "Database migrations",
    "failure_rate": "Change failure rate (90 days)",
    "release_size": "Release size",
    "outside_window": "Outside a maintenance window",
    "rollbacks": "Recent rollbacks (30 days)",
}
MAX_SCORE = 100
FAILURE_DAYS = 90
ROLLBACK_DAYS = 30

TYPE_SEVERITY = {"standard": 0.0, "hotfix": 0.6, "emergency": 1.0}
MIGRATION_SEVERITY = {MigrationKind.EXPAND: 0.0, MigrationKind.CONTRACT: 0.6,
                      MigrationKind.IRREVERSIBLE: 1.0}
BLUE_GREEN_SEVERITY = 0.25   # all traffic moves, but the old slot takes it back at once
FAILURE_RATE_FULL = 0.30     # a rate at or above it is the full weight
SIZE_FULL = {"commits": 50, "files": 200}
ROLLBACKS_FULL = 3

# Bands of the score, for badges and filters: (lowest score, band).
BANDS = ((60, "high"), (30, "medium"), (0, "low"))


def band(score: int | None) -> str | None:
    if score is None:
        return None
    return next(name for lowest, name in BANDS if score >= lowest)


@dataclass(frozen=True)
class RiskFacts:
    """What the portal knows around one change, read in bulk for many changes."""

    targets: int = 0                 # the application's targets in the environment
    batch_size: int = 1              # rolling: targets per batch (executor settings)
    deployments: int = 0             # the application's deployments ended in 90 days
    failures: int = 0                # ... of which failed or were rolled back
    rollbacks: int = 0               # rolled back there in the last 30 days
    windows: int = 0                 # maintenance windows of the environment
    in_window: bool = False          # scheduled_for falls inside one of them


@dataclass(frozen=True)
class Assessment:
    score: int
    factors: list[dict]

    @property
    def band(self) -> str:
        return band(self.score)


def _factor(name: str, value, severity: float, explanation: str) -> dict:
    severity = min(1.0, max(0.0, float(severity)))
    weight = WEIGHTS[name]
    return {"name": name, "label": LABELS[name], "value": value, "weight": weight,
            "points": round(weight * severity), "explanation": explanation}


def _change_type(change) -> dict:
    kind = change.change_type
    return _factor("change_type", kind, TYPE_SEVERITY.get(kind, 0.0),
                   f"{kind} change" + ("" if kind == "standard" else
                                       ": shorter review, less time to test"))


def _environment(change) -> dict:
    env = change.environment
    if env.production:
        return _factor("environment", env.slug, 1.0, f"{env.name} is a production environment")
    return _factor("environment", env.slug, 0.0, f"{env.name} is not a production environment")


def _exposure(change, facts: RiskFacts) -> dict:
    """The share of targets (or traffic) that runs the new version after the first step."""
    n = facts.targets
    strategy = change.strategy
    if n <= 0:
        return _factor("exposure", 100, 1.0, "no targets listed: deploys as one unit")
    if strategy == "blue_green":
        return _factor("exposure", 100, BLUE_GREEN_SEVERITY,
                       "blue-green: all traffic switches at once, the old slot takes it "
                       "back at once")
    if strategy == "canary":
        percent, count = canary_phases(n)[0]
        share = count / n
        return _factor("exposure", round(share * 100), share,
                       f"canary: {count} of {n} targets in the first phase ({percent}%)")
    if strategy == "rolling":
        batch = min(n, max(1, facts.batch_size))
        share = batch / n
        return _factor("exposure", round(share * 100), share,
                       f"rolling: {batch} of {n} targets per batch")
    return _factor("exposure", 100, 1.0, f"all at once: {n} of {n} targets together")


def _migrations(change) -> dict:
    plan = [m for m in (change.release.migration_plan or []) if isinstance(m, dict)]
    if not plan:
        return _factor("migrations", "none", 0.0, "no database migrations")
    worst = max(plan, key=lambda m: MIGRATION_SEVERITY.get(m.get("kind"), 0.0))
    kind = worst.get("kind") or "expand"
    severity = MIGRATION_SEVERITY.get(kind, 0.0)
    if severity == 0:
        return _factor("migrations", kind, 0.0,
                       f"{len(plan)} expand migration{'s' if len(plan) != 1 else ''}: "
                       "the old version keeps working")
    same = [m.get("name", "") for m in plan if m.get("kind") == kind]
    return _factor("migrations", kind, severity,
                   f"{kind}: {', '.join(same)}"
                   + (" (a rollback cannot restore the data)" if kind == "irreversible"
                      else " (the old version no longer works after it)"))


def _failure_rate(facts: RiskFacts) -> dict:
    if not facts.deployments:
        return _factor("failure_rate", None, 0.0,
                       f"no deployments of the application in {FAILURE_DAYS} days")
    rate = facts.failures / facts.deployments
    return _factor("failure_rate", round(rate, 4), rate / FAILURE_RATE_FULL,
                   f"{facts.failures} of {facts.deployments} deployments failed or were "
                   f"rolled back in {FAILURE_DAYS} days ({rate:.0%})")


def reported_size(release) -> dict:
    """{"commits": n, "files": n}: the largest figures any CI check result of the release
    carries (e.g. ``checks["diff"] = {"status": "passed", "commits": 12, "files": 40}``)."""
    size: dict[str, int] = {}
    for result in (release.checks or {}).values():
        if not isinstance(result, dict):
            continue
        for key in SIZE_FULL:
            value = result.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                size[key] = max(value, size.get(key, 0))
    return size


def _release_size(change) -> dict:
    size = reported_size(change.release)
    if not size:
        return _factor("release_size", None, 0.0, "not reported by CI")
    severity = max(v / SIZE_FULL[k] for k, v in size.items())
    return _factor("release_size", size, severity,
                   ", ".join(f"{v} {k}" for k, v in sorted(size.items())))


def _outside_window(change, facts: RiskFacts) -> dict:
    if not change.environment.production:
        return _factor("outside_window", False, 0.0, "not production")
    if facts.in_window:
        return _factor("outside_window", False, 0.0,
                       "scheduled inside a maintenance window")
    if not facts.windows:
        why = "the environment has no maintenance window"
    elif change.scheduled_for is None:
        why = "not scheduled: deploys whenever it is started"
    else:
        why = "scheduled outside every maintenance window"
    return _factor("outside_window", True, 1.0, why)


def _rollbacks(facts: RiskFacts) -> dict:
    n = facts.rollbacks
    return _factor("rollbacks", n, n / ROLLBACKS_FULL,
                   f"{n} rollback{'s' if n != 1 else ''} of the application there in "
                   f"{ROLLBACK_DAYS} days" if n else f"none in {ROLLBACK_DAYS} days")


def assess(change, *, facts: RiskFacts) -> Assessment:
    """The score of ``change`` and its factors, in the order of ``WEIGHTS``."""
    factors = [_change_type(change), _environment(change), _exposure(change, facts),
               _migrations(change), _failure_rate(facts), _release_size(change),
               _outside_window(change, facts), _rollbacks(facts)]
    return Assessment(score=min(MAX_SCORE, sum(f["points"] for f in factors)),
                      factors=factors)
