"""Rollback (SOP 8): what a deployment may roll back to, the automatic rollback of a
run whose new version is unhealthy, and the rollback on-call or an alert asks for."""

from __future__ import annotations

from django.db import transaction

from audit.trail import System, audit_record
from catalog.models import MigrationKind
from catalog.permissions import has_env_perm
from core import clock
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep
from deployments.services.create import deployment_create
from deployments.services.queue import _announce_end, deployment_finish
from identity import assurance


def _previous_success(deployment: Deployment) -> Deployment | None:
    """The last successful deployment of another release before this one."""
    return (Deployment.objects.filter(
        application_id=deployment.application_id, environment_id=deployment.environment_id,
        status=Deployment.Status.SUCCEEDED, created_at__lt=deployment.created_at,
    ).exclude(release_id=deployment.release_id).select_related("release")
        .order_by("-created_at", "-id").first())


def irreversible_since(deployment: Deployment, after) -> list[tuple[object, str]]:
    """(when, what) of each irreversible migration applied in this environment by a
    deployment created after the moment ``after``, up to and including ``deployment``.
    One query, whatever the span: the rollback options of a page ask it once."""
    applied = (DeploymentStep.objects.filter(
        name="migrate", status=DeploymentStep.Status.SUCCEEDED,
        deployment__application_id=deployment.application_id,
        deployment__environment_id=deployment.environment_id,
        deployment__kind=Deployment.Kind.DEPLOY,
        deployment__created_at__gt=after,
        deployment__created_at__lte=deployment.created_at,
    ).select_related("deployment__release"))
    found = []
    for step in applied:
        release = step.deployment.release
        for migration in release.migration_plan or []:
            if migration.get("kind") == MigrationKind.IRREVERSIBLE:
                found.append((step.deployment.created_at,
                              f"{migration['name']} (release {release.version})"))
    return found


def irreversible_between(deployment: Deployment, back_to: Deployment) -> list[str]:
    """Irreversible migrations applied in this environment after ``back_to``, up to
    and including ``deployment``: rolling back would cross them."""
    return sorted({name for _, name in irreversible_since(deployment, back_to.created_at)})


def _rollback_refusal(deployment: Deployment) -> tuple[Deployment | None, str]:
    back_to = _previous_success(deployment)
    if back_to is None:
        return None, (f"there is no earlier successful release of "
                      f"{deployment.application.slug} in {deployment.environment.name} "
                      "to roll back to")
    crossing = irreversible_between(deployment, back_to)
    if crossing:
        return back_to, (f"rolling back to {back_to.release.version} would cross the "
                         f"irreversible migration {', '.join(crossing)}; restore the database "
                         "from its backup or fix forward under an emergency change")
    return back_to, ""


def _start_rollback(*, actor, deployment: Deployment, back_to: Deployment,
                    reason: str) -> Deployment:
    """Inside the transaction that made ``deployment`` final."""
    strategy = "blue_green" if deployment.strategy == "blue_green" else "all_at_once"
    rollback = deployment_create(
        actor=actor, release=back_to.release, environment=deployment.environment,
        strategy=strategy, change_id=deployment.change_id, kind=Deployment.Kind.ROLLBACK,
        rolled_back_deployment=deployment,
    )
    audit_record(actor=actor, action="deployment.rollback_started", obj=rollback,
                 environment=deployment.environment.slug, reason=reason,
                 after={"rolls_back": deployment.pk, "to_version": back_to.release.version,
                        "from_version": deployment.release.version})
    return rollback


def _roll_back_automatically(deployment, step, reason: str, log,
                             verdict_id: int | None = None) -> str:
    """SOP 8.1 criteria crossed: redeploy the previous good release, or say why not."""
    with transaction.atomic():
        DeploymentStep.objects.filter(pk=step.pk).update(
            status=DeploymentStep.Status.FAILED, finished_at=clock.now(), detail=reason)
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment", "application", "release")
                  .get(pk=deployment.pk))
        if locked.is_final:
            return locked.status
        actor = System(f"automatic rollback of deployment #{locked.pk}")
        back_to, refusal = _rollback_refusal(locked)
        if refusal:
            log("error", f"Automatic rollback refused: {refusal}. The on-call engineer "
                         "must decide.")
            audit_record(actor=actor, action="deployment.rollback_refused", obj=locked,
                         environment=locked.environment.slug, reason=refusal)
            if verdict_id is not None:
                # In the transaction that ends the deployment: whoever sees it failed
                # sees why.
                AnalysisVerdict.objects.filter(pk=verdict_id).update(action="rollback_refused")
            deployment_finish(deployment=locked, status=Deployment.Status.FAILED,
                              reason=f"{reason}. Automatic rollback refused: {refusal}")
            return Deployment.Status.FAILED
        deployment_finish(
            deployment=locked, status=Deployment.Status.ROLLED_BACK,
            reason=f"{reason}. Rolled back automatically to {back_to.release.version}.")
        rollback = _start_rollback(actor=actor, deployment=locked, back_to=back_to,
                                   reason=reason)
        log("warning", f"Rolling back automatically to {back_to.release.version} "
                       f"(deployment #{rollback.pk})")
    return Deployment.Status.ROLLED_BACK


@assurance.refusals_audited
def deployment_rollback(*, actor, deployment: Deployment, reason: str) -> Deployment:
    """Roll back ``deployment``: redeploy the previous successful release of its
    environment. Returns the rollback deployment (queued).

    Refused without the `rollback` permission on the environment, for a deployment
    that is not the latest of its application there, and across an irreversible
    migration (DESIGN.md section 8).
    """
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("a rollback needs a reason", fields={"reason": ["Say why."]})
    try:
        with transaction.atomic():
            locked = (Deployment.objects.select_for_update(of=("self",))
                      .select_related("environment", "application", "release")
                      .get(pk=deployment.pk))
            # An authenticated hook acting as the portal (System) holds no permissions.
            if not isinstance(actor, System) and not has_env_perm(actor, "rollback",
                                                                  locked.environment):
                raise Refused(f"you may not roll back in {locked.environment.name}",
                              code="not_permitted")
            # In Production a person rolls back only with a second factor used recently
            # (SOP 10.2); an alert acting as the portal is not asked.
            factor = (assurance.require_fresh_second_factor(
                actor=actor, doing=f"roll back in {locked.environment.name}",
                environment=locked.environment.slug)
                if locked.environment.production else {})
            if locked.status == Deployment.Status.QUEUED:
                raise InvalidTransition(f"deployment #{locked.pk} has not started; cancel it",
                                        code="not_started")
            if locked.status in (Deployment.Status.ROLLED_BACK,):
                raise InvalidTransition(f"deployment #{locked.pk} is already rolled back",
                                        code="already_rolled_back")
            newer = Deployment.objects.filter(
                application_id=locked.application_id, environment_id=locked.environment_id,
                created_at__gt=locked.created_at).exclude(pk=locked.pk).exclude(
                status=Deployment.Status.QUEUED, holds_target=False)  # not started
            if newer.exists():
                raise InvalidTransition(
                    f"deployment #{locked.pk} is not the latest of {locked.application.slug} "
                    f"in {locked.environment.name}; roll back the latest one",
                    code="not_latest")
            back_to, refusal = _rollback_refusal(locked)
            if refusal:
                raise Conflict(refusal, code="irreversible_migration" if back_to
                               else "nothing_to_roll_back_to")
            before = locked.status
            locked.status = Deployment.Status.ROLLED_BACK
            locked.finished_at = locked.finished_at or clock.now()
            who = actor.reason if isinstance(actor, System) else actor.get_username()
            locked.failure_reason = f"rolled back by {who}: {reason}"
            locked.save(update_fields=["status", "finished_at", "failure_reason"])
            audit_record(actor=actor, action="deployment.rolled_back", obj=locked,
                         environment=locked.environment.slug, before={"status": before},
                         after={"status": locked.status, "to_version": back_to.release.version,
                                **factor},
                         reason=reason)
            rollback = _start_rollback(actor=actor, deployment=locked, back_to=back_to,
                                       reason=reason)
            _announce_end(locked, locked.status)
            return rollback
    except (Refused, Conflict) as exc:
        _refusal_audited(actor, deployment, exc)
        raise


def _refusal_audited(actor, deployment: Deployment, exc) -> None:
    """A refused rollback is itself on the record (its own transaction survives)."""
    with transaction.atomic():
        audit_record(actor=actor, action="deployment.rollback.refused", obj=deployment,
                     environment=deployment.environment.slug, reason=exc.detail,
                     after={"code": exc.code})
