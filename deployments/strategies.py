"""Strategies turn a deployment into its ordered steps, target by target.

The plan is written as DeploymentStep rows when the deployment is created, so the
page shows every step before it runs and a resumed run knows exactly where it was.

- all at once: every target in one batch;
- rolling: batches of ``batch_size`` targets (application setting, default 1);
- blue-green (SOP 5.4): deploy to each target's idle slot, health check it, switch
  traffic, keep the old slot running for an instant rollback;
- canary (SOP 5.5): 5%, 25%, 50%, 100% of targets, with health analysis after each
  phase comparing the new version with the targets still on the old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALL_AT_ONCE = "all_at_once"
ROLLING = "rolling"
BLUE_GREEN = "blue_green"
CANARY = "canary"
STRATEGIES = (ALL_AT_ONCE, ROLLING, BLUE_GREEN, CANARY)

# SOP 5.5: the share of targets on the new version after each canary phase.
CANARY_PHASES = (5, 25, 50, 100)


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str
    target: object = None  # a Target, or None for a step on the whole environment
    phase: str = ""


def canary_phases(n_targets: int, percents=CANARY_PHASES) -> list[tuple[int, int]]:
    """[(percent, how many targets run the new version)], duplicates dropped.

    Each phase holds at least one more target than the last, so 4 targets give
    5% -> 1, 50% -> 2, 100% -> 4 (25% of 4 is still the one canary).
    """
    phases: list[tuple[int, int]] = []
    for percent in percents:
        count = min(n_targets, max(1, math.ceil(n_targets * percent / 100)))
        if phases and count <= phases[-1][1]:
            continue
        phases.append((percent, count))
    return phases


def _in_place(target, phase: str) -> list[StepSpec]:
    return [
        StepSpec("stop", f"Stop application services on {target.name}", target, phase),
        StepSpec("deploy", f"Deploy new version to {target.name}", target, phase),
        StepSpec("start", f"Start application services on {target.name}", target, phase),
        StepSpec("health_check", f"Health check {target.name}", target, phase),
    ]


def build_plan(*, strategy: str, targets: list, release, environment, application,
               kind: str = "deploy", inputs: dict | None = None) -> list[StepSpec]:
    """The ordered steps of one deployment (SOP 4.1 phase 2, SOP 5.4, 5.5, 6).

    ``inputs`` are the executor settings and environment settings the deployment keeps
    (``deployments.inputs``); without them, the application's and environment's own."""
    settings = (inputs["executor_settings"] if inputs is not None
                else application.executor_settings) or {}
    env_settings = (inputs["environment_settings"] if inputs is not None
                    else environment.deploy_settings) or {}
    analysed = bool(settings.get("analysis", {}).get("enabled", bool(settings.get("fleet"))))
    analysed = analysed and kind == "deploy"
    has_migrations = bool(release.migration_plan) and kind == "deploy"
    steps = [StepSpec("pre_health_check", "Pre-deployment health check"),
             StepSpec("backup", "Back up current version"),
             *_migration_steps(env_settings, has_migrations)]
    if not targets:
        steps += _untargeted_steps()
    elif strategy == BLUE_GREEN:
        steps += _blue_green_steps(targets, analysed)
    elif strategy == CANARY:
        steps += _canary_steps(targets, analysed)
    else:
        batch_size = max(1, int(settings.get("batch_size", 1))) if strategy == ROLLING else 0
        steps += _batched_steps(targets, batch_size, analysed)
    steps.append(StepSpec("finalize", "Record the release as current"))
    return steps


def _migration_steps(env_settings: dict, has_migrations: bool) -> list[StepSpec]:
    """Database migrations, with the environment's backup and maintenance mode around
    them when the release has any (SOP 6.2)."""
    if not has_migrations:
        return [StepSpec("migrate", "Run database migrations")]
    steps = []
    if env_settings.get("backup"):
        steps.append(StepSpec("backup_database", "Back up the database"))
    if env_settings.get("maintenance"):
        steps.append(StepSpec("maintenance_on", "Put the application in maintenance mode"))
    steps += [StepSpec("migrate", "Run database migrations"),
              StepSpec("verify_migrations", "Verify database migrations")]
    if env_settings.get("maintenance"):
        steps.append(StepSpec("maintenance_off", "Remove maintenance mode"))
    return steps


def _untargeted_steps() -> list[StepSpec]:
    """An application without targets deploys as one unit."""
    return [
        StepSpec("stop", "Stop application services"),
        StepSpec("deploy", "Deploy new version"),
        StepSpec("start", "Start application services"),
        StepSpec("health_check", "Post-deployment health check"),
    ]


def _blue_green_steps(targets: list, analysed: bool) -> list[StepSpec]:
    """Deploy and check every idle slot, then switch every target."""
    steps = []
    for target in targets:
        steps.append(StepSpec("deploy_idle", f"Deploy to the idle slot of {target.name}",
                              target, "idle slot"))
        steps.append(StepSpec("health_check_idle",
                              f"Health check the idle slot of {target.name}",
                              target, "idle slot"))
    for target in targets:
        steps.append(StepSpec("switch", f"Switch traffic on {target.name}", target, "switch"))
    if analysed:
        steps.append(StepSpec("analysis", "Health analysis after the switch",
                              phase="after switch"))
    return steps


def _canary_steps(targets: list, analysed: bool) -> list[StepSpec]:
    """Targets in the canary phases, with a health analysis after each phase."""
    steps, done = [], 0
    for percent, count in canary_phases(len(targets)):
        phase = f"canary {percent}%"
        for target in targets[done:count]:
            steps += _in_place(target, phase)
        done = count
        if analysed:
            steps.append(StepSpec("analysis", f"Health analysis at {percent}%", phase=phase))
    return steps


def _batched_steps(targets: list, batch_size: int, analysed: bool) -> list[StepSpec]:
    """Rolling (``batch_size`` targets at a time) or, with 0, all at once."""
    size = batch_size or len(targets)
    batches = [targets[i:i + size] for i in range(0, len(targets), size)]
    steps = []
    for n, batch in enumerate(batches, start=1):
        phase = f"batch {n} of {len(batches)}" if batch_size else ""
        for target in batch:
            steps += _in_place(target, phase)
    if analysed:
        steps.append(StepSpec("analysis", "Health analysis", phase="all targets"))
    return steps
