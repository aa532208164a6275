"""The engine's state changes, one module per topic; callers import from here.

- ``queue``: which deployment holds an application's target in an environment, the
  order of those waiting, the start checks, handing a deployment to its workers, and
  ``deployment_finish``, the end that lets the next one start;
- ``create``: ``deployment_create``, a queued deployment with its planned steps;
- ``run``: the run on a worker (run lock, claim, steps, the run's end);
- ``analysis``: health analysis during a run (baseline, verdicts; SOP 8.1);
- ``rollback``: what may be rolled back to, automatic and requested rollbacks (SOP 8);
- ``operator``: on-call's decisions (cancel, retry a step, mark a step done);
- ``sweep``: the beat's sweep of dead runs, lost queue heads and lost messages.

Each is one transaction with its audit event. Release registration and artifact trust
are the catalogue's (``catalog.services``).
"""

from deployments.services.create import deployment_create
from deployments.services.operator import (
    deployment_cancel,
    deployment_mark_step_done,
    deployment_retry_step,
    may_operate,
)
from deployments.services.queue import (
    HOLDING,
    LANE_LOCK_CLASS,
    deploy_queue,
    deployment_finish,
    queue_head,
    queue_position,
    register_start_check,
)
from deployments.services.rollback import (
    deployment_rollback,
    irreversible_between,
    irreversible_since,
)
from deployments.services.run import (
    HEALTH_STEPS,
    MAX_ATTEMPTS,
    RUN_LOCK_CLASS,
    SECRET_MASK,
    SECRET_MASK_MIN_LENGTH,
    SOP_STEPS,
    STEP_MAX_ATTEMPTS,
    RunState,
    claim_run,
    configuration_provider,
    deployment_run,
    run_is_live,
)
from deployments.services.sweep import deployments_resume_stale

__all__ = [
    "HEALTH_STEPS",
    "HOLDING",
    "LANE_LOCK_CLASS",
    "MAX_ATTEMPTS",
    "RUN_LOCK_CLASS",
    "SECRET_MASK",
    "SECRET_MASK_MIN_LENGTH",
    "SOP_STEPS",
    "STEP_MAX_ATTEMPTS",
    "RunState",
    "claim_run",
    "configuration_provider",
    "deploy_queue",
    "deployment_cancel",
    "deployment_create",
    "deployment_finish",
    "deployment_mark_step_done",
    "deployment_retry_step",
    "deployment_rollback",
    "deployment_run",
    "deployments_resume_stale",
    "irreversible_between",
    "irreversible_since",
    "may_operate",
    "queue_head",
    "queue_position",
    "register_start_check",
    "run_is_live",
]
