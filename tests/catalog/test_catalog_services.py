"""The catalogue's own rules, asked of its services directly: releases are immutable and
registered only by people who may request changes; an environment is locked by whoever
may roll back there, with a reason, once."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from catalog import services
from catalog.models import Application, Environment, Release
from core.errors import Conflict, Invalid, InvalidTransition, Refused

DIGEST = "a" * 64


@pytest.fixture
def app(demo):
    return Application.objects.order_by("pk").first()


def test_a_release_is_registered_once_and_the_same_body_again_returns_it(demo, app):
    release, created = services.release_register(
        actor=demo.engineer, application=app, version="9.9.9",
        artifact_url="", commit_sha="abc123", notes="- a fix")
    again, created_again = services.release_register(
        actor=demo.engineer, application=app, version="9.9.9",
        artifact_url="", commit_sha="abc123", notes="- a fix")
    assert (created, created_again) == (True, False)
    assert again.pk == release.pk
    assert AuditEvent.objects.filter(action="release.registered",
                                     object_id=str(release.pk)).count() == 1


def test_a_registered_version_with_other_content_is_a_conflict_and_changes_nothing(demo, app):
    release, _ = services.release_register(actor=demo.engineer, application=app,
                                           version="9.9.10", commit_sha="abc123")
    with pytest.raises(Conflict) as refused:
        services.release_register(actor=demo.engineer, application=app, version="9.9.10",
                                  commit_sha="def456")
    assert refused.value.code == "release_exists"
    release.refresh_from_db()
    assert release.commit_sha == "abc123"


def test_an_artifact_without_its_digest_is_refused_and_the_attempt_audited(demo, app):
    with pytest.raises(Invalid):
        services.release_register(actor=demo.engineer, application=app, version="9.9.11",
                                  artifact_url="https://example.invalid/app.tar.gz")
    assert not Release.objects.filter(application=app, version="9.9.11").exists()
    assert AuditEvent.objects.filter(action="release.refused",
                                     object_repr__endswith="9.9.11").exists()


def test_someone_who_may_request_nothing_registers_no_release(demo, app):
    with pytest.raises(Refused) as refused:
        services.release_register(actor=demo.outsider, application=app, version="9.9.12",
                                  artifact_sha256=DIGEST)
    assert refused.value.code == "not_permitted"
    assert not Release.objects.filter(version="9.9.12").exists()


def test_an_environment_is_locked_by_on_call_with_a_reason_once(demo):
    staging = Environment.objects.get(slug="staging")
    with pytest.raises(Refused):
        services.environment_lock(actor=demo.outsider, environment=staging, reason="incident")
    with pytest.raises(Invalid):
        services.environment_lock(actor=demo.oncall, environment=staging, reason="  ")
    staging.refresh_from_db()
    assert not staging.locked

    services.environment_lock(actor=demo.oncall, environment=staging, reason="INC-42")
    staging.refresh_from_db()
    assert (staging.locked, staging.lock_reason) == (True, "INC-42")
    with pytest.raises(InvalidTransition) as twice:
        services.environment_lock(actor=demo.oncall, environment=staging, reason="again")
    assert twice.value.code == "already_locked"
    assert AuditEvent.objects.filter(action="environment.locked",
                                     object_id=str(staging.pk)).count() == 1
