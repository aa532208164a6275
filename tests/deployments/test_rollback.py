"""Manual and automatic rollback: permissions, the previous good release, migrations."""

import pytest

from audit.models import AuditEvent
from core.errors import Conflict, Invalid, InvalidTransition, Refused
from deployments import services
from deployments.models import Deployment

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

IRREVERSIBLE = [{"name": "0007_expand_orders", "kind": "expand"},
                {"name": "0008_drop_legacy_prices", "kind": "irreversible"}]


def test_manual_rollback_redeploys_the_previous_successful_release(
        fleet, celery_worker_process):
    shop = fleet(targets=2)
    assert shop.deploy("1.0.0").status == "succeeded"
    current = shop.deploy("1.1.0", "rolling")
    assert shop.served_versions() == {"web-1": "1.1.0", "web-2": "1.1.0"}

    rollback = services.deployment_rollback(actor=shop.demo.oncall, deployment=current,
                                            reason="checkout errors reported by support")

    assert rollback.kind == "rollback"
    assert rollback.rolled_back_deployment == current
    assert rollback.release.version == "1.0.0"
    assert shop.wait(rollback).status == "succeeded"
    assert shop.served_versions() == {"web-1": "1.0.0", "web-2": "1.0.0"}
    current.refresh_from_db()
    assert current.status == "rolled_back"
    assert "checkout errors" in current.failure_reason
    event = AuditEvent.objects.get(action="deployment.rolled_back", object_id=str(current.pk))
    assert event.actor_name == "oncall" and event.reason == "checkout errors reported by support"
    # Rolling back the same deployment twice is refused.
    with pytest.raises(InvalidTransition) as exc:
        services.deployment_rollback(actor=shop.demo.oncall, deployment=current, reason="again")
    assert exc.value.code == "already_rolled_back"


def test_rollback_needs_the_rollback_permission_and_a_reason(fleet, celery_worker_process):
    shop = fleet(targets=1, environment="staging")
    shop.deploy("1.0.0")
    current = shop.deploy("1.1.0")

    with pytest.raises(Refused):  # engineers may deploy to staging, not roll back
        services.deployment_rollback(actor=shop.demo.engineer, deployment=current,
                                     reason="looks wrong")
    with pytest.raises(Invalid):
        services.deployment_rollback(actor=shop.demo.oncall, deployment=current, reason=" ")
    assert AuditEvent.objects.filter(action="deployment.rollback.refused",
                                     actor_name="engineer").exists()
    current.refresh_from_db()
    assert current.status == "succeeded"


def test_only_the_latest_deployment_can_be_rolled_back_and_not_the_first(
        fleet, celery_worker_process):
    shop = fleet(targets=1)
    first = shop.deploy("1.0.0")
    with pytest.raises(Conflict) as exc:
        services.deployment_rollback(actor=shop.demo.oncall, deployment=first, reason="x")
    assert exc.value.code == "nothing_to_roll_back_to"
    shop.deploy("1.1.0")
    with pytest.raises(InvalidTransition) as exc:
        services.deployment_rollback(actor=shop.demo.oncall, deployment=first, reason="x")
    assert exc.value.code == "not_latest"


def test_manual_rollback_across_an_irreversible_migration_is_refused_with_the_reason(
        fleet, celery_worker_process):
    shop = fleet(targets=1)
    shop.deploy("1.0.0")
    migrating = shop.deploy(shop.release("1.1.0", migrations=IRREVERSIBLE))
    assert migrating.status == "succeeded"
    assert migrating.steps.filter(name="verify_migrations", status="succeeded").exists()

    with pytest.raises(Conflict) as exc:
        services.deployment_rollback(actor=shop.demo.oncall, deployment=migrating,
                                     reason="slow pages")
    assert exc.value.code == "irreversible_migration"
    assert "0008_drop_legacy_prices (release 1.1.0)" in exc.value.detail
    assert not Deployment.objects.filter(rolled_back_deployment=migrating).exists()
    options = {o["version"]: o for o in services_rollback_options(migrating)}
    assert options["1.0.0"]["safe"] is False


def services_rollback_options(deployment):
    from deployments.selectors import rollback_options

    return rollback_options(deployment.application, deployment.environment)


def test_automatic_rollback_refuses_to_cross_an_irreversible_migration(
        fleet, celery_worker_process):
    shop = fleet(targets=2)
    shop.deploy("1.0.0")
    bad = shop.release("1.1.0", bad=True, migrations=IRREVERSIBLE)

    deployment = shop.deploy(bad, "canary")

    assert deployment.status == "failed"
    assert "Automatic rollback refused" in deployment.failure_reason
    assert "0008_drop_legacy_prices" in deployment.failure_reason
    assert deployment.verdicts.get(outcome="failed").action == "rollback_refused"
    assert not Deployment.objects.filter(rolled_back_deployment=deployment).exists()
    assert AuditEvent.objects.filter(action="deployment.rollback_refused",
                                     object_id=str(deployment.pk)).exists()


def test_backup_and_maintenance_steps_run_when_the_environment_asks_for_them(
        fleet, celery_worker_process):
    shop = fleet(targets=1)
    shop.environment.deploy_settings = {"backup": True, "maintenance": True}
    shop.environment.save()
    shop.deploy("1.0.0")
    deployment = shop.deploy(shop.release("1.1.0", migrations=IRREVERSIBLE[:1]))
    names = list(deployment.steps.values_list("name", flat=True))
    assert names[:7] == ["pre_health_check", "backup", "backup_database", "maintenance_on",
                         "migrate", "verify_migrations", "maintenance_off"]
    assert deployment.status == "succeeded", deployment.failure_reason
    assert not (shop.base / "maintenance").exists()
    assert (shop.base / "backups" / f"{deployment.pk}.schema.json").exists()
