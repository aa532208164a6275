"""A Python client generated from the portal's OpenAPI schema, as published, drives the
whole CI flow against a live portal and a real worker.

The schema is used as the portal serves it (no hand edits); openapi-python-client
generates the client offline, in a network namespace with no network where the
machine allows one.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from catalog.models import Release
from deployments.models import Deployment

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PACKAGE = "portal_api_client"
BIN = Path(sys.executable).parent


def _offline_prefix() -> list[str]:
    """``unshare -rn``: run with no network at all, when this machine permits it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


def generate(schema: Path, out: Path, prefix: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, str(BIN / "openapi-python-client"), "generate", "--path", str(schema),
         "--output-path", str(out), "--meta", "none"],
        capture_output=True, text=True, timeout=180,
        # The generator formats its output with ruff, which it looks up on PATH.
        env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(out.parent)})


@pytest.fixture(scope="session")
def schema_file(tmp_path_factory, django_db_setup):
    path = tmp_path_factory.mktemp("schema") / "openapi.json"
    call_command("spectacular", "--file", str(path), "--format", "openapi-json",
                 "--validate", "--fail-on-warn")
    return path


@pytest.fixture(scope="session")
def api_client_package(schema_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    done = generate(schema_file, root / PACKAGE, _offline_prefix())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))


def test_the_client_is_generated_without_network(schema_file, tmp_path):
    prefix = _offline_prefix()
    if not prefix:
        pytest.skip("this machine permits no network namespace (unshare -rn)")
    done = generate(schema_file, tmp_path / PACKAGE, prefix)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / PACKAGE / "api" / "changes" / "changes_approve_create.py").exists()


def test_a_generated_client_registers_reports_requests_approves_and_deploys(
        api_client_package, portal_live, token, live_server, celery_worker_process):
    from portal_api_client import AuthenticatedClient
    from portal_api_client.api.changes import (
        changes_approve_create,
        changes_create,
        changes_deploy_create,
        changes_list,
        changes_retrieve,
    )
    from portal_api_client.api.deployments import deployments_log_list, deployments_retrieve
    from portal_api_client.api.hooks import hooks_ci_create
    from portal_api_client.api.preflight import preflight_retrieve
    from portal_api_client.api.releases import releases_create
    from portal_api_client.models import (
        ChangeInRequest,
        ChangeOut,
        CheckStatusEnum,
        CiHookInRequest,
        CiHookOut,
        DecisionInRequest,
        DeployOut,
        Error,
        GateEnum,
        ReleaseInRequest,
        ReleaseOut,
    )
    from portal_api_client.models import (
        Deployment as DeploymentModel,
    )

    cast = portal_live

    def as_user(user, *scopes):
        return AuthenticatedClient(base_url=live_server.url, token=token(user, *scopes),
                                   raise_on_unexpected_status=True)

    ci = as_user(cast.ci, "read", "request", "deploy")

    release = releases_create.sync(client=ci, idempotency_key="run-9-release",
                                   body=ReleaseInRequest(application="storefront",
                                                         version="5.0.0",
                                                         commit_sha="0badc0de"))
    assert isinstance(release, ReleaseOut), release
    again = releases_create.sync_detailed(client=ci, idempotency_key="run-9-release",
                                          body=ReleaseInRequest(application="storefront",
                                                                version="5.0.0",
                                                                commit_sha="0badc0de"))
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.parsed.id == release.id
    assert Release.objects.filter(version="5.0.0").count() == 1

    for check in ("tests", "security_scan"):
        reported = hooks_ci_create.sync(client=ci, body=CiHookInRequest(
            release=release.id, check=check, status=CheckStatusEnum.PASSED,
            authors=["alice"]))
        assert isinstance(reported, CiHookOut), reported
    assert reported.checks["tests"]["status"] == "passed"

    change = changes_create.sync(client=ci, idempotency_key="run-9-change",
                                 body=ChangeInRequest(release=release.id,
                                                      environment="staging"))
    assert isinstance(change, ChangeOut), change

    # Not approved yet: the refusal is the error model, with its code and blockers.
    refused = changes_deploy_create.sync(change.id, client=ci)
    assert isinstance(refused, Error)
    assert refused.code == "not_ready"
    assert {b.code for b in refused.blockers} >= {"gate_tech_lead", "gate_qa"}
    assert not Deployment.objects.filter(change_id=change.id).exists()

    for user, gate in ((cast.techlead, GateEnum.TECH_LEAD), (cast.qa, GateEnum.QA)):
        approver = as_user(user, "read", "approve")
        shown = changes_retrieve.sync(change.id, client=approver)
        decided = changes_approve_create.sync(change.id, client=approver, body=DecisionInRequest(
            gate=gate, comment="Reviewed", fingerprint=shown.fingerprint))
        assert isinstance(decided, ChangeOut), decided
    assert preflight_retrieve.sync(client=ci, change=change.id).ready is True

    started = changes_deploy_create.sync(change.id, client=ci, idempotency_key="run-9-deploy")
    assert isinstance(started, DeployOut), started

    deadline = time.monotonic() + 90
    after, messages = 0, []
    while True:
        deployment = deployments_retrieve.sync(started.deployment, client=ci)
        assert isinstance(deployment, DeploymentModel), deployment
        lines = deployments_log_list.sync(started.deployment, client=ci, after=after)
        for line in lines:
            messages.append(line.message)
            after = line.seq
        if deployment.status.value in ("succeeded", "failed", "rolled_back", "cancelled"):
            if not lines:
                break
        assert time.monotonic() < deadline, f"still {deployment.status} after 90 s"
        time.sleep(0.3)
    assert deployment.status.value == "succeeded"
    assert deployment.progress == 100
    assert messages[-1] == "Deployment succeeded"

    # Lists page with a cursor the client can follow.
    page = changes_list.sync(client=ci, release=release.id)
    assert [c.id for c in page.results] == [change.id]
    assert page.next_ is None or isinstance(page.next_, str)
