"""How services hand work to tasks (core.dispatch): held, run here, or refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import clock, dispatch
from core.models import IdempotencyKey

PURGE = "core.tasks.idempotency_keys_purge"


@pytest.fixture
def an_expired_key(demo):
    key = IdempotencyKey.objects.create(user=demo.engineer, key="k-1", method="POST",
                                        path="/api/v1/changes/", request_hash="0" * 64)
    IdempotencyKey.objects.filter(pk=key.pk).update(
        created_at=clock.now() - timedelta(days=2))
    return key


def test_held_work_is_kept_by_name_and_nothing_runs(settings, an_expired_key):
    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()

    dispatch.enqueue(PURGE)

    assert [h.task for h in dispatch.held()] == [PURGE]
    assert IdempotencyKey.objects.filter(pk=an_expired_key.pk).exists()
    dispatch.clear_held()


def test_inline_work_runs_the_named_task_in_this_process(settings, an_expired_key):
    settings.PORTAL_TASK_DISPATCH = "inline"

    dispatch.enqueue(PURGE)

    assert not IdempotencyKey.objects.filter(pk=an_expired_key.pk).exists()


def test_an_override_holds_for_its_block_only(settings):
    settings.PORTAL_TASK_DISPATCH = "celery"
    with dispatch.override("hold"):
        assert dispatch.mode() == "hold"
    assert dispatch.mode() == "celery"


def test_an_unknown_mode_is_refused_naming_the_choices(settings):
    settings.PORTAL_TASK_DISPATCH = "sometimes"
    with pytest.raises(ValueError, match="celery, inline, hold"):
        dispatch.enqueue(PURGE)
    with pytest.raises(ValueError):
        with dispatch.override("later"):
            pass
