"""What a deployment runs with, besides its release: fixed when the deployment is made.

An application's executor and its settings (the deploy command, the strategy's
parameters: batch size, health analysis), its targets in the environment and the
environment's deployment settings (backup and maintenance around migrations) decide
what runs. They are read once, when the deployment is created, and kept on it
(``Deployment.inputs``); the run uses what was kept, never the catalogue as it is by
then. The approval workflow reads the same values for a change's fingerprint
(``approvals.services.fingerprint``) and hands what it checked to
``deployment_create``, so a deployment runs with exactly what was approved.
"""

from __future__ import annotations

from catalog.models import Application, Environment, Target


def _target_row(target: Target) -> dict:
    return {"id": target.pk, "name": target.name, "address": target.address}


def inputs_of(application: Application, environment: Environment,
              targets: list[Target] | None = None) -> dict:
    """The catalogue's current answer for ``application`` in ``environment``."""
    if targets is None:
        targets = list(Target.objects.filter(application_id=application.pk,
                                             environment_id=environment.pk).order_by("name"))
    return {
        "executor": application.executor,
        "executor_settings": application.executor_settings or {},
        "targets": [_target_row(t) for t in sorted(targets, key=lambda t: t.name)],
        "environment_settings": environment.deploy_settings or {},
    }


def inputs_of_many(pairs) -> dict[tuple[int, int], dict]:
    """``inputs_of`` for many (application, environment) pairs in one query, by ids."""
    pairs = {(a.pk, e.pk): (a, e) for a, e in pairs}
    if not pairs:
        return {}
    found: dict[tuple[int, int], list[Target]] = {key: [] for key in pairs}
    for target in Target.objects.filter(application_id__in={a for a, _ in pairs},
                                        environment_id__in={e for _, e in pairs}):
        key = (target.application_id, target.environment_id)
        if key in found:
            found[key].append(target)
    return {key: inputs_of(app, env, found[key]) for key, (app, env) in pairs.items()}


def _kept(deployment) -> dict:
    return getattr(deployment, "inputs", None) or {}


def executor_kind(deployment) -> str:
    return _kept(deployment).get("executor") or deployment.application.executor


def approval_of(deployment) -> dict:
    """What the approval workflow checked when it released the deployment: the change,
    its fingerprint, the gates and who approved them ({} for a deployment no change
    released)."""
    return _kept(deployment).get("approval") or {}


def environment_settings(deployment) -> dict:
    """The environment's deploy settings as the deployment keeps them."""
    kept = _kept(deployment)
    if "environment_settings" in kept:
        return kept["environment_settings"] or {}
    return deployment.environment.deploy_settings or {}


def executor_settings(deployment) -> dict:
    kept = _kept(deployment)
    if "executor_settings" in kept:
        return kept["executor_settings"] or {}
    return deployment.application.executor_settings or {}


def targets(deployment) -> list[Target]:
    """The deployment's targets as they were when it was made (name and address)."""
    kept = _kept(deployment)
    if "targets" not in kept:
        return list(Target.objects.filter(application_id=deployment.application_id,
                                          environment_id=deployment.environment_id)
                    .order_by("name"))
    return [Target(pk=row["id"], name=row["name"], address=row["address"],
                   application_id=deployment.application_id,
                   environment_id=deployment.environment_id)
            for row in kept["targets"]]


def pin_targets(deployment, steps) -> None:
    """Give each step's target the name and address kept on the deployment (in memory),
    so that an edit of a target after the deployment was made changes nothing it runs."""
    kept = {row["id"]: row for row in _kept(deployment).get("targets", [])}
    for step in steps:
        row = kept.get(step.target_id)
        if row is not None and step.target is not None:
            step.target.name, step.target.address = row["name"], row["address"]
