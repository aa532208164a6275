"""The daily roll-ups of the DORA figures: kept true as deployments end through the
engine's services, rebuilt by a command, and the figures read from them equal the
exact computation over every deployment for any range, period and filter."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import TestCase

from catalog.models import Application, Environment
from deployments import selectors, services
from deployments.models import Deployment
from reporting import metrics, rollups
from reporting.models import DeploymentDay
from reporting.rolled_figures import split_range
from tests.reporting.conftest import SINCE, UNTIL, at, make_deployment


def stored() -> list[tuple]:
    return sorted(DeploymentDay.objects.values_list(
        "application_id", "environment_id", "day", "deployments", "completed", "failures",
        "lead_seconds", "restored", "restore_seconds"))


def assert_as_rebuilt() -> None:
    """What the services kept equals a recomputation of the whole history."""
    kept = stored()
    rollups.rebuild()
    assert kept == stored()


def both_ways(user, *, environment=None, application=None, since=SINCE, until=UNTIL,
              period="month") -> tuple[dict, dict]:
    """The figures computed over every deployment and from the roll-ups."""
    qs = selectors.deployments_visible_to(user)
    env_ids = None
    if environment:
        qs = qs.filter(environment__slug=environment)
        env_ids = [Environment.objects.get(slug=environment).pk]
    app_id = None
    if application:
        qs = qs.filter(application__slug=application)
        app_id = Application.objects.get(slug=application).pk
    names = dict(Application.objects.values_list("pk", "slug"))
    exact = metrics.dora(qs, since=since, until=until, period=period, applications=names)
    rolled = metrics.dora(qs, since=since, until=until, period=period, applications=names,
                          rolled={"environment_ids": env_ids, "application_id": app_id})
    return exact, rolled


def _end(deployment, status, *, failed_step=False):
    """End ``deployment`` as its worker does, in one transaction with its row lock."""
    if failed_step:
        deployment.steps.update(status="failed")
    with TestCase.captureOnCommitCallbacks(execute=False), transaction.atomic():
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment").get(pk=deployment.pk))
        services.deployment_finish(deployment=locked, status=status,
                                   reason="" if status == "succeeded" else "it broke")
    deployment.refresh_from_db()
    return deployment


def _running(app, env, version, committed, finished, kind="deploy", rolled_back=None):
    return make_deployment(app, env, version=version, committed=committed, finished=finished,
                           status="running", kind=kind, rolled_back=rolled_back)


def test_ending_deployments_keeps_the_rollups_as_a_rebuild_writes_them(demo):
    app = Application.objects.get(slug="storefront")
    env = Environment.objects.get(slug="production")
    ok = _end(_running(app, env, "1.0.0", at(1, 1, 0), at(1, 2, 10)), "succeeded")
    assert_as_rebuilt()
    _end(_running(app, env, "1.1.0", at(1, 2, 12), at(1, 3, 10)), "failed", failed_step=True)
    assert_as_rebuilt()
    _end(_running(app, env, "1.2.0", at(1, 3, 12), at(1, 5, 23, 30)), "rolled_back",
         failed_step=True)
    assert_as_rebuilt()
    # Days later, a success restores both failures: their days change too.
    before = {row[2]: row for row in stored()}
    fixed = _end(_running(app, env, "1.2.1", at(1, 6, 0), at(1, 8, 9)), "succeeded")
    after = {row[2]: row for row in stored()}
    assert before[at(1, 3).date()][7] == 0 and after[at(1, 3).date()][7] == 1
    assert after[at(1, 5).date()][7] == 1
    assert_as_rebuilt()
    # The success is rolled back by hand later: it becomes a failure, and what it
    # restored waits for the next success (the rollback run).
    with transaction.atomic():
        locked = (Deployment.objects.select_for_update(of=("self",))
                  .select_related("environment", "application", "release").get(pk=fixed.pk))
        locked.status = Deployment.Status.ROLLED_BACK
        locked.save(update_fields=["status"])
        services.queue._announce_end(locked, locked.status, advance=False)
    assert {row[2]: row for row in stored()}[at(1, 3).date()][7] == 0
    assert_as_rebuilt()
    _end(_running(app, env, "1.0.0", at(1, 1, 0), at(1, 8, 11), kind="rollback",
                  rolled_back=fixed), "succeeded")
    assert_as_rebuilt()
    # A cancelled run counts nowhere.
    _end(_running(app, env, "1.3.0", at(1, 9, 0), at(1, 9, 10)), "cancelled")
    assert_as_rebuilt()
    exact, rolled = both_ways(demo.auditor, environment="production")
    assert exact == rolled
    assert rolled["totals"]["deployments"] == 4 and rolled["totals"]["restored"] == 3
    assert ok.status == "succeeded"


@pytest.fixture
def busy_history(demo):
    """Ten weeks of two applications in two environments with every end a deployment
    can have: succeeded, failed, rolled back with and without a failed step, cancelled,
    rollback runs; at random minutes (seeded)."""
    rng = random.Random(26)
    billing, _ = Application.objects.get_or_create(slug="billing", defaults={"name": "Billing"})
    apps = [Application.objects.get(slug="storefront"), billing]
    envs = [Environment.objects.get(slug="production"), Environment.objects.get(slug="staging")]
    moment = at(12, 20, 0, year=2024)
    for index in range(320):
        moment += timedelta(minutes=rng.randint(20, 600))
        status = rng.choice(["succeeded"] * 5 + ["failed", "rolled_back", "cancelled"])
        make_deployment(rng.choice(apps), rng.choice(envs), version=f"{index}.0.0",
                        committed=moment - timedelta(hours=rng.uniform(0.5, 200)),
                        finished=moment, status=status,
                        kind="rollback" if rng.random() < 0.1 else "deploy",
                        failed_step=status != "succeeded" and rng.random() < 0.7)
    rollups.rebuild()


RANGES = [
    (SINCE, UNTIL, "month"),
    (at(1, 3, 13, 17), at(2, 20, 8, 5), "month"),
    (at(1, 3, 13, 17), at(2, 20, 8, 5), "week"),
    (at(1, 10, 0), at(2, 9, 0), "day"),
    (at(12, 25, 6, year=2024), at(3, 1, 7), "week"),
]


@pytest.mark.parametrize(("since", "until", "period"), RANGES)
@pytest.mark.parametrize(("environment", "application"), [
    ("production", None), (None, None), ("staging", "billing")])
def test_figures_from_rollups_equal_the_exact_computation(busy_history, demo, since, until,
                                                            period, environment, application):
    exact, rolled = both_ways(demo.auditor, environment=environment, application=application,
                              since=since, until=until, period=period)
    assert exact["totals"]["deployments"] > 0
    assert rolled == exact


def test_figures_from_rollups_equal_the_exact_ones_in_another_time_zone(busy_history, demo,
                                                                        settings):
    settings.TIME_ZONE = "America/New_York"
    rollups.rebuild()  # the days are local days
    exact, rolled = both_ways(demo.auditor, since=at(1, 1, 5), until=at(3, 1, 5))
    assert rolled == exact
    assert len(rolled["periods"]) == 2


def test_someone_without_production_sees_the_same_figures_either_way(busy_history, demo):
    exact, rolled = both_ways(demo.engineer, environment=None)
    assert rolled == exact


def test_a_range_reads_whole_days_from_rollups_and_only_its_edges_from_deployments():
    days, exact = split_range(at(1, 3, 13, 17), at(1, 20, 8), [at(1, 3, 13, 17), at(1, 10, 13, 17)])
    assert days[0] == at(1, 4).date() and days[-1] == at(1, 19).date()
    assert at(1, 10).date() not in days  # a period starts inside that day
    assert exact == [(at(1, 3, 13, 17), at(1, 4, 0)), (at(1, 10, 0), at(1, 11, 0)),
                     (at(1, 20, 0), at(1, 20, 8))]


def test_the_rebuild_command_recomputes_the_history_and_the_last_days(busy_history, demo):
    kept = stored()
    DeploymentDay.objects.all().delete()
    call_command("rebuild_deployment_rollups", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert stored() == kept
    DeploymentDay.objects.filter(day__gte=at(2, 1).date()).update(deployments=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("core.clock.now", lambda: at(3, 2, 12))
        call_command("rebuild_deployment_rollups", "--days", "40", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert stored() == kept
