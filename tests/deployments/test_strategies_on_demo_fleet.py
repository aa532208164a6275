"""A real worker runs each strategy on the demo fleet: real processes on loopback ports."""

import pytest

from audit.models import AuditEvent
from deployments.models import AnalysisVerdict, Deployment
from deployments.strategies import canary_phases

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("strategy", ["all_at_once", "rolling", "blue_green", "canary"])
def test_each_strategy_moves_every_target_to_the_new_version(
        strategy, fleet, celery_worker_process):
    shop = fleet(targets=4)
    first = shop.deploy("1.0.0")
    assert first.status == "succeeded", first.failure_reason
    assert set(shop.served_versions().values()) == {"1.0.0"}

    deployment = shop.deploy("1.1.0", strategy)

    assert deployment.status == "succeeded", deployment.failure_reason
    assert deployment.progress == 100
    assert shop.served_versions() == {t.name: "1.1.0" for t in shop.targets}
    steps = list(deployment.steps.select_related("target"))
    assert {s.status for s in steps} == {"succeeded"}
    # Every target went through its own steps.
    assert {s.target.name for s in steps if s.target} == {t.name for t in shop.targets}
    assert (shop.base / "current").resolve().name == "1.1.0"

    if strategy == "canary":
        phases = [s.phase for s in steps if s.name == "analysis"]
        assert phases == ["canary 5%", "canary 50%", "canary 100%"]
        verdicts = list(deployment.verdicts.exclude(outcome="baseline"))
        assert [v.outcome for v in verdicts] == ["passed"] * 3
        # The first phase compared one canary with the three targets still on 1.0.0.
        assert verdicts[0].figures["canary"]["targets"] == ["web-1"]
        assert verdicts[0].figures["baseline"]["targets"] == ["web-2", "web-3", "web-4"]
    if strategy == "rolling":
        assert {s.phase for s in steps if s.target} == {f"batch {n} of 4" for n in range(1, 5)}
    if strategy == "blue_green":
        # SOP 5.4: the old slot keeps running 1.0.0 for an instant rollback.
        from deployments.executors.local import LocalExecutor

        executor = LocalExecutor(deployment, lambda *a: None)
        idle = executor.endpoints(shop.targets, slot="idle")
        assert all(idle.values())
        assert {executor.live_slot(t) for t in shop.targets} == {"green"}


def test_canary_phases_are_5_25_50_100_percent_of_targets():
    assert canary_phases(20) == [(5, 1), (25, 5), (50, 10), (100, 20)]
    assert canary_phases(4) == [(5, 1), (50, 2), (100, 4)]
    assert canary_phases(1) == [(5, 1)]


def test_bad_canary_is_rolled_back_automatically_with_its_figures(fleet, celery_worker_process):
    shop = fleet(targets=4)
    assert shop.deploy("1.0.0").status == "succeeded"
    bad = shop.release("1.1.0", bad=True)

    deployment = shop.deploy(bad, "canary")

    assert deployment.status == "rolled_back"
    assert "error rate 100.0% is above 1.0%" in deployment.failure_reason
    verdict = deployment.verdicts.get(outcome="failed")
    assert verdict.phase == "canary 5%"
    assert verdict.action == "rolled_back"
    assert verdict.figures["canary"]["error_rate"] == 100.0
    assert verdict.figures["baseline"]["error_rate"] == 0.0
    assert verdict.figures["thresholds"]["error_rate_points"] == 1.0
    # Only the 5% canary ever ran the bad version.
    touched = {s.target.name for s in deployment.steps.filter(name="deploy",
                                                              status="succeeded")}
    assert touched == {"web-1"}

    rollback = Deployment.objects.get(rolled_back_deployment=deployment)
    assert rollback.kind == "rollback"
    assert rollback.release.version == "1.0.0"
    rollback = shop.wait(rollback)
    assert rollback.status == "succeeded", rollback.failure_reason
    assert shop.served_versions() == {t.name: "1.0.0" for t in shop.targets}
    assert AuditEvent.objects.filter(action="deployment.rollback_started",
                                     object_id=str(rollback.pk), actor_kind="system").exists()


def test_dry_run_reports_the_verdict_and_does_not_roll_back(fleet, celery_worker_process):
    shop = fleet(targets=2)
    assert shop.deploy("1.0.0").status == "succeeded"
    bad = shop.release("1.1.0", bad=True)

    deployment = shop.deploy(bad, "canary", dry_run=True)

    assert deployment.status == "succeeded"
    failed = list(deployment.verdicts.filter(outcome=AnalysisVerdict.Outcome.FAILED))
    assert failed and {v.action for v in failed} == {"reported"}
    assert all(v.dry_run for v in failed)
    assert deployment.log_lines.filter(message__contains="a real run would roll back").exists()
    assert not Deployment.objects.filter(rolled_back_deployment=deployment).exists()


def test_failing_health_check_on_a_blue_green_idle_slot_never_switches_traffic(
        fleet, celery_worker_process):
    shop = fleet(targets=2)
    assert shop.deploy("1.0.0", "blue_green").status == "succeeded"
    sick = shop.release("1.1.0", behaviour={"healthy": False})

    deployment = shop.deploy(sick, "blue_green")

    assert deployment.status == "rolled_back"
    assert "health check failing" in deployment.failure_reason
    assert not deployment.steps.filter(name="switch", status="succeeded").exists()
    rollback = shop.wait(Deployment.objects.get(rolled_back_deployment=deployment))
    assert rollback.status == "succeeded"
    assert set(shop.served_versions().values()) == {"1.0.0"}


def test_demo_data_bad_version_is_rolled_back_by_canary_analysis_in_production(
        demo, celery_worker_process):
    """The story of the demo: 1.2.0 is good, 1.3.0 answers with errors."""
    from django.db import transaction

    from catalog.models import Environment, Release
    from deployments import services
    from tests.conftest import wait_for

    production = Environment.objects.get(slug="production")

    def deploy(version):
        release = Release.objects.get(application__slug="storefront", version=version)
        with transaction.atomic():
            d = services.deployment_create(actor=demo.oncall, release=release,
                                           environment=production, strategy="canary")
        wait_for(lambda: Deployment.objects.get(pk=d.pk).is_final, timeout=120)
        d.refresh_from_db()
        return d

    assert deploy("1.2.0").status == "succeeded"
    bad = deploy("1.3.0")
    assert bad.status == "rolled_back", bad.failure_reason
    assert bad.verdicts.get(outcome="failed").figures["canary"]["error_rate"] > 1.0
    rollback = Deployment.objects.get(rolled_back_deployment=bad)
    wait_for(lambda: Deployment.objects.get(pk=rollback.pk).is_final, timeout=120)
    rollback.refresh_from_db()
    assert rollback.status == "succeeded" and rollback.release.version == "1.2.0"
