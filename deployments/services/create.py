"""Making a deployment: queued with its planned steps, its run sent after commit."""

from __future__ import annotations

import uuid

from django.db import IntegrityError, transaction

from audit.trail import audit_record
from catalog.models import Application, Environment, Release
from core import clock
from core.errors import Invalid
from deployments import inputs as deployment_inputs
from deployments.models import Deployment, DeploymentStep
from deployments.services.queue import (
    _advance_after_commit,
    _announce_end,
    _enqueue,
    _waiting,
    queue_head,
    queue_position,
)
from deployments.strategies import STRATEGIES, build_plan


def deployment_create(
    *,
    actor,
    release: Release,
    environment: Environment,
    strategy: str = "all_at_once",
    change_id: int | None = None,
    kind: str = Deployment.Kind.DEPLOY,
    rolled_back_deployment: Deployment | None = None,
    dry_run: bool | None = None,
    inputs: dict | None = None,
) -> Deployment:
    """Create a queued deployment with its planned steps and queue its run after commit.

    ``inputs`` is what it runs with besides the release (``deployments.inputs.inputs_of``
    plus, for a change, ``configuration_version`` and ``change_version``): the approval
    workflow passes the values it checked against the approvals; without them, the
    catalogue's current ones are read. They are kept on the deployment and the run uses
    them, whatever is edited meanwhile.

    When another deployment of the application holds the target in the environment (or
    others wait before it), it waits in the queue (``holds_target`` False) and starts
    when its turn comes (``_advance_queue``). Must be called inside the caller's
    transaction (the change that releases it).
    """
    application = release.application
    if strategy not in STRATEGIES:
        raise Invalid(f"unknown strategy {strategy!r}",
                      fields={"strategy": [f"Choose one of {', '.join(STRATEGIES)}."]})
    if inputs is None:
        inputs = deployment_inputs.inputs_of(application, environment)
    if dry_run is None:
        dry_run = bool((inputs["executor_settings"] or {}).get("analysis", {})
                       .get("dry_run", False))
    if environment.supersede_queued and kind == Deployment.Kind.DEPLOY:
        superseded = _supersede_queued(actor=actor, application=application,
                                       environment=environment, release=release)
    else:
        superseded = []
    head = queue_head(application.pk, environment.pk)
    if head is not None and kind == Deployment.Kind.ROLLBACK \
            and head.status == Deployment.Status.QUEUED:
        # A rollback goes before a deployment that has not started yet; that one waits
        # at the front of the queue again.
        Deployment.objects.filter(pk=head.pk).update(holds_target=False)
        head = None
    # It takes the target at once only when nothing holds it and nothing waits before it
    # (a rollback goes first); else it waits and the queue moves after commit. The
    # database settles two requests at once: one head per application and environment.
    takes = head is None and (kind == Deployment.Kind.ROLLBACK or not _waiting(
        application.pk, environment.pk).exists())
    task_id = uuid.uuid4().hex
    fields = dict(application=application, environment=environment, release=release,
                  strategy=strategy, change_id=change_id, task_id=task_id, kind=kind,
                  started_by=actor if getattr(actor, "pk", None) else None,
                  rolled_back_deployment=rolled_back_deployment, dry_run=dry_run,
                  inputs=inputs)
    deployment = None
    if takes:
        try:
            with transaction.atomic():
                deployment = Deployment.objects.create(holds_target=True, **fields)
        except IntegrityError:
            # deployment_one_active_per_app_env: another request took the target first.
            head = queue_head(application.pk, environment.pk)
    if deployment is None:
        deployment = Deployment.objects.create(holds_target=False, **fields)
    plan = build_plan(strategy=strategy, targets=deployment_inputs.targets(deployment),
                      release=release, environment=environment, application=application,
                      kind=kind, inputs=inputs)
    DeploymentStep.objects.bulk_create(
        DeploymentStep(deployment=deployment, position=i, name=spec.name, title=spec.title,
                       target=spec.target, phase=spec.phase)
        for i, spec in enumerate(plan, start=1)
    )
    after = {"release": release.version, "strategy": strategy, "change": change_id,
             "kind": kind, "dry_run": dry_run, "steps": len(plan),
             "rolls_back": rolled_back_deployment.pk if rolled_back_deployment else None}
    if not deployment.holds_target:
        after["waits_for"] = head.pk if head is not None else None
        after["queue_position"] = queue_position(deployment)
    if superseded:
        after["supersedes"] = superseded
    audit_record(actor=actor, action="deployment.queued", obj=deployment,
                 environment=environment.slug, after=after)
    if deployment.holds_target:
        transaction.on_commit(lambda: _enqueue(deployment.pk, task_id))
    else:
        _advance_after_commit(application.pk, environment.pk)
    return deployment


def _supersede_queued(*, actor, application: Application, environment: Environment,
                      release: Release) -> list[int]:
    """Newest first: cancel the application's deployments still queued here (not
    started), each under its row lock. Their changes go back to approved."""
    done = []
    older = (Deployment.objects.select_for_update(of=("self",))
             .select_related("environment", "release")
             .filter(application=application, environment=environment,
                     status=Deployment.Status.QUEUED, kind=Deployment.Kind.DEPLOY)
             .order_by("created_at", "id"))
    for old in older:
        reason = (f"superseded by a newer deployment of {application.slug} "
                  f"{release.version} ({environment.name} runs the newest queued one)")
        old.status = Deployment.Status.CANCELLED
        old.finished_at = clock.now()
        old.failure_reason = reason
        old.holds_target = False
        old.save(update_fields=["status", "finished_at", "failure_reason", "holds_target"])
        audit_record(actor=actor, action="deployment.superseded", obj=old,
                     environment=environment.slug,
                     before={"status": Deployment.Status.QUEUED},
                     after={"status": old.status, "version": old.release.version,
                            "superseded_by_version": release.version}, reason=reason)
        _announce_end(old, old.status, advance=False)
        done.append(old.pk)
    return done
