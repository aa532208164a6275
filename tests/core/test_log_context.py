"""Logs carry what they are about: deployment_id, change_id or delivery_id."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from approvals import services as approvals
from approvals import signals
from core import logcontext
from deployments.models import Deployment
from integrations.hooks import sign
from tests.conftest import wait_for
from tests.factories import ReleaseFactory, request_change


def record(message: str = "something happened") -> logging.LogRecord:
    made = logging.getLogger("portal.test").makeRecord(
        "portal.test", logging.INFO, __file__, 1, message, (), None)
    logcontext.ContextFilter().filter(made)
    return made


def test_records_logged_inside_bind_carry_the_ids_and_outside_do_not():
    with logcontext.bind(change_id=40):
        with logcontext.bind(deployment_id=12):
            inner = record()
        after_inner = record()
    outside = record()

    assert (inner.change_id, inner.deployment_id) == (40, 12)
    assert after_inner.change_id == 40 and not hasattr(after_inner, "deployment_id")
    assert not hasattr(outside, "change_id")
    with pytest.raises(TypeError):
        with logcontext.bind(user_id=1):
            pass


def test_the_plain_format_appends_the_ids_and_json_is_one_valid_object():
    with logcontext.bind(deployment_id=12, delivery_id="abc"):
        made = record("run starts")
    plain = logcontext.ContextFormatter("%(levelname)s %(message)s").format(made)
    as_json = json.loads(logcontext.JsonFormatter().format(made))

    assert plain == "INFO run starts deployment_id=12 delivery_id=abc"
    assert as_json["deployment_id"] == 12 and as_json["delivery_id"] == "abc"
    assert as_json["message"] == "run starts" and as_json["level"] == "INFO"
    assert logcontext.ContextFormatter("%(message)s").format(record("bare")) == "bare"


def test_a_thread_started_with_carried_logs_with_the_starters_ids():
    import threading

    seen = {}
    with logcontext.bind(deployment_id=7):
        thread = threading.Thread(target=logcontext.carried(
            lambda: seen.update(logcontext.bound())))
    thread.start()
    thread.join()

    assert seen == {"deployment_id": 7}


def test_the_portals_handlers_are_configured_with_the_filter_and_the_chosen_format():
    from django.utils.log import configure_logging

    handlers = [h for h in logging.getLogger().handlers
                if any(isinstance(f, logcontext.ContextFilter) for f in h.filters)]
    assert handlers, "LOGGING's console handler has no ContextFilter"
    assert isinstance(handlers[0].formatter, logcontext.ContextFormatter)

    json_logging = {**django_settings.LOGGING, "handlers": {"console": {
        **django_settings.LOGGING["handlers"]["console"], "formatter": "json"}}}
    configure_logging(django_settings.LOGGING_CONFIG, json_logging)
    try:
        [handler] = [h for h in logging.getLogger().handlers
                     if isinstance(h.formatter, logcontext.JsonFormatter)]
        with logcontext.bind(change_id=3):
            made = logging.getLogger("approvals").makeRecord(
                "approvals", logging.WARNING, __file__, 1, "refused", (), None)
            for each in handler.filters:
                each.filter(made)
        assert json.loads(handler.format(made))["change_id"] == 3
    finally:
        configure_logging(django_settings.LOGGING_CONFIG, django_settings.LOGGING)


@pytest.fixture
def context_captured(caplog):
    """caplog, its handler filtered as the portal's are (LOGGING's log_context)."""
    caplog.handler.addFilter(logcontext.ContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def test_a_hook_delivery_logs_with_its_delivery_id(demo, settings, context_captured):
    user = get_user_model().objects.get(username="ci-bot")
    user.groups.add(Group.objects.get(name="on-call"))
    settings.PORTAL_HOOK_USER = "ci-bot"
    settings.PORTAL_HOOK_SECRET_CI = "s3cret-for-log-tests"
    release = ReleaseFactory()
    raw = json.dumps({"release": release.pk, "check": "tests", "status": "passed"}).encode()

    answer = APIClient().post("/api/v1/hooks/ci", data=raw, content_type="application/json",
                              HTTP_X_PORTAL_SIGNATURE=sign("s3cret-for-log-tests", raw),
                              HTTP_X_GITHUB_DELIVERY="delivery-77")

    assert answer.status_code == 200, answer.json()
    received = [r for r in context_captured.records if "delivery" in r.getMessage()]
    assert received and all(r.delivery_id == "delivery-77" for r in received)


def test_a_change_decision_through_the_api_runs_with_the_change_id_bound(demo, api, settings):
    settings.PORTAL_TASK_DISPATCH = "hold"
    change = request_change(demo.engineer, "staging")
    seen = []

    def listener(sender, change_id, **kwargs):
        seen.append((change_id, logcontext.bound()))

    signals.gate_approved.connect(listener)
    try:
        answer = api(demo.qa).post(f"/api/v1/changes/{change.pk}/approve", {"gate": "qa"},
                                   format="json")
    finally:
        signals.gate_approved.disconnect(listener)

    assert answer.status_code == 200, answer.json()
    assert seen == [(change.pk, {"change_id": change.pk})]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_deployment_run_by_the_worker_logs_with_its_deployment_id(demo, celery_worker_process):
    change = request_change(demo.engineer, "staging")
    approvals.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approvals.gate_approve(actor=demo.qa, change=change, role="qa")
    deployment = approvals.change_request_deploy(actor=demo.engineer, change=change)
    log = Path(os.environ["PORTAL_VAR_DIR"]) / "test-worker-test.log"

    def run_lines():
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if f"deployment {deployment.pk}: run " in line]
        return lines if len(lines) == 2 else None

    lines = wait_for(run_lines, timeout=60)
    assert Deployment.objects.get(pk=deployment.pk).status in Deployment.FINAL
    assert all(line.endswith(f"deployment_id={deployment.pk}") for line in lines), lines


def test_the_stale_sweep_logs_each_deployment_it_sends_again_with_its_id(
        demo, settings, context_captured):
    """The beat's sweep handles many deployments; each line about one carries its id."""
    from datetime import timedelta

    from django.db import transaction

    from catalog.models import Environment
    from core import clock, dispatch
    from deployments import services as engine

    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()
    release = ReleaseFactory()
    with transaction.atomic():
        deployment = engine.deployment_create(
            actor=demo.oncall, release=release,
            environment=Environment.objects.get(slug="staging"))
    long_ago = clock.now() - timedelta(seconds=settings.PORTAL_REQUEUE_AFTER_SECONDS + 60)
    Deployment.objects.filter(pk=deployment.pk).update(created_at=long_ago)

    assert engine.deployments_resume_stale() >= 1

    sent_again = [r for r in context_captured.records
                  if "had not started" in r.getMessage()]
    assert [r.deployment_id for r in sent_again] == [deployment.pk]
    assert [h.args for h in dispatch.held("deployments.tasks.deployment_execute")][-1] == (
        deployment.pk,)
