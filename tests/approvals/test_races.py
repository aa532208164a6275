"""Races settled in the database: real transactions, real threads, 50 rounds each."""

import threading

import pytest
from django.db import connection

from approvals import services
from approvals.models import Approval, ChangeRequest
from core.errors import DomainError
from deployments.models import Deployment
from tests.factories import request_change

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 50


def race(*calls):
    """Run the calls at the same instant in threads; return (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [], []

    def run(call):
        try:
            barrier.wait()
            results.append(call())
        except DomainError as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def test_two_cab_members_approving_at_once_fill_the_gate_once(demo):
    for _ in range(ROUNDS):
        change = request_change(demo.engineer, "production")
        results, errors = race(
            lambda c=change: services.gate_approve(actor=demo.cab, change=c, role="cab"),
            lambda c=change: services.gate_approve(actor=demo.cab2, change=c, role="cab"),
        )
        assert len(results) == 1 and len(errors) == 1
        assert errors[0].code == "already_decided"
        assert Approval.objects.filter(change=change, gate__role="cab").count() == 1
        assert change.gates.get(role="cab").status == "approved"


def test_approve_racing_reject_on_one_gate_has_exactly_one_outcome(demo):
    outcomes = set()
    for _ in range(ROUNDS):
        change = request_change(demo.engineer, "production")
        results, errors = race(
            lambda c=change: services.gate_approve(actor=demo.cab, change=c, role="cab"),
            lambda c=change: services.gate_reject(actor=demo.cab2, change=c, role="cab",
                                                  comment="not now"),
        )
        assert len(results) == 1 and len(errors) == 1
        assert errors[0].code == "already_decided"
        change.refresh_from_db()
        decisions = list(Approval.objects.filter(change=change).values_list("decision",
                                                                            flat=True))
        assert len(decisions) == 1
        expected = "rejected" if decisions == ["rejected"] else "pending_approval"
        assert change.status == expected
        outcomes.add(decisions[0])
    assert outcomes  # each round ended one way or the other, never both


def test_two_deploy_presses_at_once_start_one_deployment(demo):
    for _ in range(ROUNDS):
        change = request_change(demo.engineer, "development")
        results, errors = race(
            lambda c=change: services.change_request_deploy(actor=demo.engineer, change=c),
            lambda c=change: services.change_request_deploy(actor=demo.oncall, change=c),
        )
        assert len(results) == 1 and len(errors) == 1
        assert errors[0].code in ("already_deploying", "deployment_in_progress")
        assert Deployment.objects.filter(change_id=change.pk).count() == 1
        assert ChangeRequest.objects.get(pk=change.pk).status == "deploying"
        # Free the environment for the next round.
        Deployment.objects.filter(change_id=change.pk).update(status="succeeded")


def test_a_last_approval_that_starts_the_deployment_waits_for_an_environment_lock(demo):
    """The decision takes the environment's row before the audit trail's chain lock, as
    every deployment and environment lock does: with the order reversed, on-call holding
    the environment while the approval held the chain would deadlock."""
    from django.db import transaction

    from audit.trail import audit_record
    from catalog.models import Environment
    from tests.conftest import wait_for, waiting_for_a_lock

    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    staging = Environment.objects.get(slug="staging")
    oncall, qa = demo.oncall, demo.qa
    holding, decided = threading.Event(), threading.Event()
    results, errors = [], []

    def on_call_holds_the_environment():
        try:
            with transaction.atomic():
                Environment.objects.select_for_update().get(pk=staging.pk)
                holding.set()
                # Until the last approval waits for the environment (or, taking its
                # locks in another order, has got through without it).
                wait_for(lambda: decided.is_set() or waiting_for_a_lock(), timeout=30,
                         interval=0.02)
                audit_record(actor=oncall, action="environment.viewed", obj=staging,
                             environment=staging.slug)
        except Exception as exc:  # noqa: BLE001 - a deadlock victim lands here
            errors.append(exc)
        finally:
            connection.close()

    def last_approval():
        holding.wait(10)
        try:
            results.append(services.gate_approve(actor=qa, change=change, role="qa"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            decided.set()
            connection.close()

    threads = [threading.Thread(target=on_call_holds_the_environment),
               threading.Thread(target=last_approval)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(results) == 1
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    assert Deployment.objects.filter(change_id=change.pk).count() == 1
