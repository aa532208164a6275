"""What an approver approves, as hashes: one per concern of a change (``fingerprint``)
and one for the whole of what they are shown (``change_version``).

An edit reopens only the gates whose concern changed (``CONCERNS``); a decision on a
version that is no longer current is refused (approve what you saw).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from approvals.models import ChangeRequest, GateRole
from configuration.selectors import digests_for
from deployments import inputs as deployment_inputs

# Which gates each part of an approved change concerns (DESIGN.md section 8): an
# edit reopens only the gates whose concern changed.
CONCERNS: dict[str, set[str]] = {
    "artifact": {r.value for r in GateRole},
    "strategy": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB, GateRole.EMERGENCY},
    "rollback_plan": {GateRole.TECH_LEAD, GateRole.CAB, GateRole.EMERGENCY},
    "migration_plan": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB, GateRole.EMERGENCY},
    "configuration": {GateRole.TECH_LEAD, GateRole.SECURITY, GateRole.EMERGENCY},
    "secret_references": {GateRole.SECURITY},
    "on_call": {GateRole.CAB, GateRole.EMERGENCY},
    # What CAB and the business weigh: how risky, whom it affects, and when it runs.
    "risk": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    "impact": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    "scheduled_for": {GateRole.CAB, GateRole.BUSINESS, GateRole.EMERGENCY},
    # What runs, besides the artifact (deployments.inputs): the executor and its settings
    # are the deploy command and the strategy's parameters, as much what runs as the
    # artifact is; the targets say where it runs (and where its configuration and
    # secrets go); the environment's settings whether a backup and maintenance mode
    # surround the migrations.
    "executor": {r.value for r in GateRole},
    "targets": {GateRole.TECH_LEAD, GateRole.CAB, GateRole.SECURITY, GateRole.EMERGENCY},
    "environment_settings": {GateRole.TECH_LEAD, GateRole.QA, GateRole.CAB,
                             GateRole.EMERGENCY},
}


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _moment(value: datetime | None) -> str | None:
    """A time to the second in UTC, so a value read back from the database hashes alike."""
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


def fingerprint(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                inputs: dict | None = None) -> dict[str, str]:
    """A hash per concern of what an approver approves: everything that decides what
    runs (artifact and digest, configuration, executor and its settings, targets,
    strategy and its parameters, environment settings, schedule) and what CAB weighs.

    ``digests`` are the change's configuration digests and ``inputs`` its deployment
    inputs (``deployments.inputs``) when the caller read them for many changes at once
    (``configuration.selectors.digests_for_many``, ``run_inputs_for_many``) or fixed
    them for a deployment (``_start_deployment``).
    """
    release = change.release
    config_digest, secrets_digest = digests if digests is not None else digests_for(change)
    if inputs is None:
        inputs = deployment_inputs.inputs_of(release.application, change.environment)
    return {
        "artifact": _digest([release.version, release.artifact_sha256, release.artifact_url]),
        "strategy": _digest(change.strategy),
        "rollback_plan": _digest(change.rollback_plan.strip()),
        "migration_plan": _digest(release.migration_plan),
        "configuration": _digest(config_digest),
        "secret_references": _digest(secrets_digest),
        "on_call": _digest(change.on_call_id),
        "risk": _digest(change.risk),
        "impact": _digest(change.impact.strip()),
        "scheduled_for": _digest(_moment(change.scheduled_for)),
        "executor": _digest([inputs["executor"], inputs["executor_settings"]]),
        "targets": _digest([[t["name"], t["address"]] for t in inputs["targets"]]),
        "environment_settings": _digest(inputs["environment_settings"]),
    }


def run_inputs_for_many(changes) -> dict[tuple[int, int], dict]:
    """The deployment inputs of many changes in one query, by (application id,
    environment id): pass ``inputs=`` to ``fingerprint`` / ``change_version``."""
    return deployment_inputs.inputs_of_many(
        {(c.release.application, c.environment) for c in changes})


def change_version(change: ChangeRequest, *, digests: tuple[str, str] | None = None,
                   inputs: dict | None = None) -> str:
    """One value for everything an approver is shown and decides on: the page and the
    API hand it out, a decision brings it back, and a decision on a version that is no
    longer current is refused (approve what you saw)."""
    return version_of(change, fingerprint(change, digests=digests, inputs=inputs))


def version_of(change: ChangeRequest, parts: dict[str, str]) -> str:
    """``change_version`` from the change's ``fingerprint`` when the caller already has
    it (a decision stores the one and checks the other: one reading of the inputs)."""
    return _digest({**parts, "what": _digest([change.release_id, change.environment_id,
                                              change.change_type])})
