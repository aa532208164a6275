"""The organisation the history tells of: its applications, their release rhythm and
the words its people use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from catalog.models import Application
from demo.history.clock import local

DAYS = 182


class HistoryError(Exception):
    """The history could not be made as planned (a service refused a step)."""


@dataclass
class AppPlan:
    slug: str
    name: str
    team: str
    targets: dict[str, list[str]]
    strategy: str
    releases: int
    every_days: float
    commit_lag_hours: float
    to_production: bool = True
    analysis: bool = False
    migrations: bool = False


APPS = [
    AppPlan("payments-api", "Payments API", "Payments",
            {"development": ["api-1"], "staging": ["api-1", "api-2"],
             "production": ["api-1", "api-2", "api-3", "api-4"]},
            "canary", releases=15, every_days=11.5, commit_lag_hours=14, analysis=True),
    AppPlan("mobile-backend", "Mobile backend", "Mobile",
            {"development": ["mb-1"], "staging": ["mb-1"],
             "production": ["mb-1", "mb-2", "mb-3"]},
            "rolling", releases=8, every_days=21, commit_lag_hours=24 * 5),
    AppPlan("data-pipeline", "Data pipeline", "Data",
            {"development": ["etl-1"], "staging": ["etl-1"], "production": ["etl-1", "etl-2"]},
            "all_at_once", releases=5, every_days=34, commit_lag_hours=24 * 12,
            migrations=True),
    AppPlan("ops-console", "Ops console", "Platform",
            {"development": ["tool-1"], "staging": ["tool-1"], "production": ["tool-1"]},
            "all_at_once", releases=2, every_days=80, commit_lag_hours=24 * 40,
            to_production=False),
]

APPROVAL_COMMENTS = {
    "tech_lead": ["Reviewed the diff and the rollback plan; fine.", "LGTM, small and tested.",
                  "Approved: migrations are additive.", "Good to go."],
    "qa": ["Regression suite green, exploratory pass on checkout flows.",
           "Tested on staging, no issues found.", "Smoke and API contract tests pass."],
    "cab": ["Low risk, inside the window, on-call named.", "Approved for the Tuesday window.",
            "Risk understood; rollback plan is adequate."],
    "security": ["No new dependencies with known CVEs; scan clean.",
                 "Secrets handling unchanged; approved.", "SAST and dependency scan clean."],
    "business": ["Customer support briefed.", "Fine for the business; no campaign running.",
                 "Approved, release notes shared with the account teams."],
    "emergency": ["Incident confirmed; fix reviewed with the tech lead on the call."],
}
NOTES = ["Faster {thing}.", "Fixes in {thing}.", "New {thing}.", "Reworked {thing}.",
         "Dependency updates and {thing}."]
THINGS = {
    "payments-api": ["card tokenisation", "refund reconciliation", "3-D Secure flow",
                     "payout batching", "idempotency keys", "fraud scoring hooks"],
    "mobile-backend": ["push notifications", "session refresh", "offline sync",
                       "feature flags", "image resizing"],
    "data-pipeline": ["event partitioning", "nightly aggregates", "late-event handling",
                      "schema registry client"],
    "ops-console": ["audit export screen", "on-call rota view"],
}


@dataclass
class History:
    """What was made, for the command's summary and the tests."""

    applications: list[str] = field(default_factory=list)
    changes: int = 0
    deployments: int = 0
    problems: list[str] = field(default_factory=list)


def start_of(now: datetime) -> datetime:
    """When the history begins: the demo's base data is dated an hour before it."""
    return local(now - timedelta(days=DAYS), 8)


def already_made() -> bool:
    return Application.objects.filter(slug__in=[p.slug for p in APPS]).exists()
