"""The demo history: made through the services, believable, and verifiable by an auditor."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from approvals.models import (
    Approval,
    ChangeRequest,
    ChecklistKind,
    Freeze,
    PostImplementationReview,
)
from approvals.selectors import inbox_gates
from audit.models import AuditEvent
from catalog.models import Application
from deployments.models import AnalysisVerdict, Deployment
from reporting import metrics
from tests.conftest import PASSWORD
from tests.demo.cab_room import the_cab_room_has_its_history as _the_cab_room_has_its_history

pytestmark = pytest.mark.django_db


def test_demo_history_made_through_the_services(capsys, api):
    """One run of the (small) history, looked at from every side: it takes a while."""
    history = timezone.now()
    call_command("seed_demo", password=PASSWORD, history=True, history_size="small",
                 verbosity=0)
    _the_portal_is_left_on_its_own_clock_executors_and_dispatch()
    _dora_metrics_are_filled_with_bands_that_differ_between_applications(history)
    _rollbacks_automatic_with_verdict_and_manual_with_verification()
    _reviews_rejections_schedule_and_freeze()
    _every_approver_has_something_waiting_now()
    _the_cab_room_has_its_history(api)
    _the_audit_chain_verifies_and_reads_in_time_order(history, capsys)
    _history_is_made_once(capsys)


def _the_portal_is_left_on_its_own_clock_executors_and_dispatch():
    from datetime import UTC, datetime

    from django.conf import settings

    from core import clock, dispatch
    from deployments.executors import EXECUTORS, LocalExecutor
    from deployments.health import HEALTH_PROVIDERS, provider_for

    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=1)
    assert abs(timezone.now() - datetime.now(UTC)) < timedelta(minutes=1)
    assert EXECUTORS["local"] is LocalExecutor
    assert provider_for({}).__class__.__name__ == "HttpProber"
    assert "http" in HEALTH_PROVIDERS
    # No dispatch mode of its own left behind, nothing held.
    assert dispatch.mode() == getattr(settings, "PORTAL_TASK_DISPATCH", "celery")
    assert not dispatch.held()


def _dora_metrics_are_filled_with_bands_that_differ_between_applications(history):
    apps = {a.pk: a.slug for a in Application.objects.all()}
    since, until = history - timedelta(days=190), timezone.now()
    figures = metrics.dora(Deployment.objects.all(), since=since, until=until,
                           applications=apps)
    by_app = {row["application"]: row for row in figures["by_application"]}
    for slug in ("payments-api", "mobile-backend", "data-pipeline"):
        assert by_app[slug]["deployments"] > 0, slug
        assert by_app[slug]["lead_time_hours"] is not None, slug
        assert by_app[slug]["bands"]["deployment_frequency"] is not None, slug
    bands = {slug: by_app[slug]["bands"] for slug in by_app}
    assert len({tuple(sorted(b.items())) for b in bands.values()}) >= 2, bands
    assert bands["payments-api"]["lead_time"] != bands["data-pipeline"]["lead_time"]
    # Spread over the past months, none in the future.
    months = {p["start"].month for p in figures["periods"] if p["deployments"]}
    assert len(months) >= 4
    assert not Deployment.objects.filter(finished_at__gt=until).exists()
    # The storefront is left as the README's walk-through expects it.
    assert not Deployment.objects.filter(application__slug="storefront").exists()


def _rollbacks_automatic_with_verdict_and_manual_with_verification():
    auto = Deployment.objects.get(status=Deployment.Status.ROLLED_BACK,
                                  application__slug="payments-api",
                                  environment__slug="production")
    verdict = AnalysisVerdict.objects.get(deployment=auto, outcome="failed")
    assert verdict.action == "rolled_back" and verdict.reasons
    restored = auto.rollbacks.get()
    assert restored.status == Deployment.Status.SUCCEEDED

    def version(d):
        return tuple(int(p) for p in d.release.version.split("."))

    # Back to the release before it, and the fix came after the failure.
    assert version(restored) < version(auto)
    fix = Deployment.objects.filter(application__slug="payments-api",
                                    environment__slug="production",
                                    created_at__gt=auto.created_at,
                                    status=Deployment.Status.SUCCEEDED).first()
    assert fix is not None and version(fix) > version(auto)
    manual = Deployment.objects.get(status=Deployment.Status.ROLLED_BACK,
                                    application__slug="mobile-backend")
    assert manual.failure_reason.startswith("rolled back by oncall")
    assert manual.rollbacks.get().status == Deployment.Status.SUCCEEDED
    change = ChangeRequest.objects.get(pk=manual.change_id)
    verification = change.checklist.filter(kind=ChecklistKind.ROLLBACK_VERIFICATION,
                                           auto_check="")
    assert verification.exists() and not verification.filter(done=False).exists()


def _reviews_rejections_schedule_and_freeze():
    closed = PostImplementationReview.objects.get(closed_at__isnull=False)
    assert closed.closed_by.username == "cab" and closed.findings
    assert closed.change.change_type == "emergency"
    assert PostImplementationReview.objects.filter(closed_at__isnull=True).exists()
    rejected = ChangeRequest.objects.filter(status=ChangeRequest.Status.REJECTED)
    assert {c.environment.slug for c in rejected} == {"staging", "production"}
    assert all(a.comment for a in Approval.objects.filter(decision="rejected"))
    started = AuditEvent.objects.filter(action="change.deploying", actor_name="oncall")
    assert any("scheduled for" in (e.after or {}).get("trigger", "") for e in started)
    assert Freeze.objects.filter(recurs_yearly=True, environment__slug="production").exists()


def _every_approver_has_something_waiting_now():
    User = get_user_model()
    for username, role in [("cab", "cab"), ("security", "security"),
                           ("business", "business"), ("techlead", "tech_lead"),
                           ("qa", "qa")]:
        gates = inbox_gates(User.objects.get(username=username))
        assert gates.filter(role=role).exists(), username
    # Every decision carries the approver's words.
    assert not Approval.objects.filter(comment="").exists()


def _the_audit_chain_verifies_and_reads_in_time_order(history, capsys):
    capsys.readouterr()
    call_command("verify_audit")
    assert "audit trail OK" in capsys.readouterr().out
    times = list(AuditEvent.objects.order_by("id").values_list("occurred_at", flat=True))
    assert len(times) > 300
    assert times == sorted(times)
    assert times[0] < history - timedelta(days=150)
    assert times[-1] < timezone.now()
    # Made by the people of the demo through the services, not by one system actor.
    actors = set(AuditEvent.objects.values_list("actor_name", flat=True))
    assert {"engineer", "techlead", "qa", "cab", "security", "business", "oncall",
            "ci-bot"} <= actors


def _history_is_made_once(capsys):
    events = AuditEvent.objects.count()
    call_command("seed_demo", password=PASSWORD, history=True, history_size="small")
    assert "already there" in capsys.readouterr().out
    assert AuditEvent.objects.count() == events
