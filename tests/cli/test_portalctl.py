"""portalctl drives a whole pipeline against a live portal and a real Celery worker.

Each call runs the installed ``portalctl`` command as a separate process, as a CI job
would, with the token of the account the job holds.
"""

from __future__ import annotations

import hashlib
import socket

import pytest

from approvals import services as approval_services
from approvals.models import ChangeRequest
from audit.models import AuditEvent
from catalog.models import Application, Environment, Release
from deployments.models import Deployment

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

RUN = {"GITHUB_RUN_ID": "4711"}


def test_a_pipeline_registers_reports_requests_and_deploys_once_approved(
        portal_live, token, portalctl, celery_worker_process):
    cast = portal_live
    ci = token(cast.ci, "read", "request", "deploy")
    release_args = ("release", "create", "-a", "storefront", "-v", "3.1.0",
                    "--commit-sha", "abc1234", "--notes", "Faster checkout.")

    registered = portalctl(ci, *release_args, **RUN)
    assert registered.code == 0, registered.err
    release_id = int(registered.out)
    assert "registered (id" in registered.err
    # The step retried (same run): the same release, still one row.
    again = portalctl(ci, "--json", *release_args, **RUN)
    assert again.code == 0, again.err
    assert again.json()["id"] == release_id
    assert Release.objects.filter(application__slug="storefront", version="3.1.0").count() == 1

    for check in ("tests", "security_scan"):
        reported = portalctl(ci, "checks", "report", "-r", "storefront@3.1.0", "-c", check,
                             "-s", "passed", "--url", "https://ci.example.com/jobs/1",
                             "--author", "alice", "--merger", "carol", **RUN)
        assert reported.code == 0, reported.err
    release = Release.objects.get(pk=release_id)
    assert {name: value["status"] for name, value in release.checks.items()} == {
        "tests": "passed", "security_scan": "passed"}

    create = ("change", "create", "-r", str(release_id), "-e", "staging",
              "--rollback-plan", "Redeploy 3.0.9")
    requested = portalctl(ci, *create, **RUN)
    assert requested.code == 0, requested.err
    change_id = int(requested.out)
    assert portalctl(ci, *create, **RUN).out.strip() == str(change_id)
    assert ChangeRequest.objects.filter(release_id=release_id).count() == 1

    # Not approved yet: preflight says what is missing (exit 1) and deploy is refused with
    # the portal's code (exit 2), starting nothing.
    waiting = portalctl(ci, "preflight", "--change", str(change_id))
    assert waiting.code == 1
    assert "gate_tech_lead" in waiting.err and "gate_qa" in waiting.err
    refused = portalctl(ci, "deploy", str(change_id), "--wait", **RUN)
    assert refused.code == 2
    assert "409 not_ready" in refused.err
    assert not Deployment.objects.filter(change_id=change_id).exists()

    for user, gate in ((cast.techlead, "tech_lead"), (cast.qa, "qa")):
        decided = portalctl(token(user, "read", "approve"), "change", "approve",
                            str(change_id), "-g", gate, "-m", "Reviewed")
        assert decided.code == 0, decided.err
    # Each approval was made on the version portalctl read and showed.
    seen = [e.after["version_seen"] for e in AuditEvent.objects.filter(
        action="gate.approved", object_id=str(change_id))]
    assert len(seen) == 2 and all(seen)
    assert portalctl(ci, "preflight", "--change", str(change_id)).code == 0

    # The same step of the same run again, now approved: it deploys and follows the log.
    deployed = portalctl(ci, "deploy", str(change_id), "--wait", "--interval", "0.3", **RUN)
    assert deployed.code == 0, deployed.err
    deployment = Deployment.objects.get(change_id=change_id)
    assert deployed.out.strip() == str(deployment.pk)
    assert deployment.status == "succeeded"
    assert "Deployment succeeded" in deployed.err
    assert deployed.err.count("Deployment succeeded") == 1  # each log line once

    # A retried deploy step answers the deployment it started; nothing runs twice.
    retried = portalctl(ci, "deploy", str(change_id), **RUN)
    assert retried.code == 0, retried.err
    assert retried.out.strip() == str(deployment.pk)
    assert Deployment.objects.filter(change_id=change_id).count() == 1


def test_a_failed_deployment_exits_1_with_its_reason(portal_live, token, portalctl,
                                                     celery_worker_process, tmp_path):
    cast = portal_live
    ci = token(cast.ci, "read", "request", "deploy")
    artifact = tmp_path / "storefront.tar.gz"
    artifact.write_bytes(b"release bytes")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    registered = portalctl(ci, "release", "create", "-a", "storefront", "-v", "3.2.0",
                           "--artifact-url", f"file://{artifact}", "--artifact-sha256", wrong)
    assert registered.code == 0, registered.err
    release = Release.objects.get(pk=int(registered.out))
    release.checks = {"tests": {"status": "passed"}, "security_scan": {"status": "passed"}}
    release.save(update_fields=["checks"])
    change = approval_services.change_request_create(
        actor=cast.engineer, release=release,
        environment=Environment.objects.get(slug="staging"))
    approval_services.gate_approve(actor=cast.techlead, change=change, role="tech_lead")
    approval_services.gate_approve(actor=cast.qa, change=change, role="qa")

    result = portalctl(ci, "--json", "deploy", str(change.pk), "--wait", "--interval", "0.3")

    assert result.code == 1, result.err
    assert result.json()["status"] == "failed"
    assert "checksum mismatch" in result.err


def test_refusals_exit_2_with_the_code_and_change_nothing(portal_live, token, portalctl):
    cast = portal_live
    release = Release.objects.create(application=Application.objects.get(slug="storefront"),
                                     version="4.0.0", created_by=cast.engineer)

    # An engineer may not mark a release's checks: only CI accounts report them.
    engineer = token(cast.engineer, "read", "request")
    marked = portalctl(engineer, "checks", "report", "-r", str(release.pk), "-c",
                       "security_scan", "-s", "passed")
    assert marked.code == 2
    assert "403" in marked.err
    release.refresh_from_db()
    assert release.checks == {}

    # A token without the scope: refused before anything runs.
    read_only = token(cast.ci, "read")
    created = portalctl(read_only, "--json", "change", "create", "-r", str(release.pk),
                        "-e", "staging")
    assert created.code == 2
    assert created.json()["code"] == "insufficient_scope"
    assert "insufficient_scope" in created.err
    assert not ChangeRequest.objects.filter(release=release).exists()

    # Bad or missing credentials, unknown objects.
    assert portalctl("not-a-token", "change", "show", "1").code == 2
    assert portalctl(None, "change", "show", "1").code == 2
    missing = portalctl(read_only, "change", "show", "999999")
    assert missing.code == 2 and "404 not_found" in missing.err


def test_an_unreachable_portal_exits_3(portalctl, db):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for args in (("release", "create", "-a", "storefront", "-v", "1.0.0"),
                 ("deploy", "1", "--wait")):
        result = portalctl("some-token", *args, url=closed, PORTAL_RETRIES="1")
        assert result.code == 3, result.err
        assert "cannot reach the portal" in result.err



def test_portalctl_is_refused_production_decisions_without_a_fresh_second_factor(
        portal_live, token, portalctl):
    from allauth.mfa.models import Authenticator

    from identity.models import ApiToken
    from tests.factories import request_change

    cast = portal_live
    change = request_change(cast.engineer, "production", on_call=cast.oncall,
                            rollback_plan="Redeploy the previous release.")
    Authenticator.objects.filter(user=cast.cab).delete()
    no_factor = portalctl(token(cast.cab), "--json", "change", "approve", str(change.pk),
                          "-g", "cab")
    # A token made before its owner had a factor, so without a fresh check.
    stale = token(cast.security)
    ApiToken.objects.filter(user=cast.security).update(second_factor="",
                                                       second_factor_at=None)
    not_fresh = portalctl(stale, "--json", "change", "approve", str(change.pk),
                          "-g", "security")

    assert no_factor.code == 2 and no_factor.json()["code"] == "mfa_required"
    assert not_fresh.code == 2 and not_fresh.json()["code"] == "step_up_required"
    assert "PORTAL_STEP_UP_CODE" in not_fresh.err
    assert not change.approvals.exists()


def test_portalctl_answers_the_step_up_with_the_owners_code_and_retries_once(
        portal_live, portalctl):
    from audit.trail import System
    from identity.services import api_token_issue
    from tests.conftest import totp_code
    from tests.factories import request_change

    cast = portal_live
    change = request_change(cast.engineer, "production", on_call=cast.oncall,
                            rollback_plan="Redeploy the previous release.")
    # Issued by the operator (as manage.py issue_token does): no check of its own.
    token, raw = api_token_issue(actor=System("manage.py issue_token"), user=cast.business,
                                 name="laptop", scopes=["read", "approve"])

    wrong = portalctl(raw, "--json", "change", "approve", str(change.pk), "-g", "business",
                      PORTAL_STEP_UP_CODE="000000")
    assert wrong.code == 2 and wrong.json()["code"] == "wrong_code"
    assert not change.approvals.exists()

    approved = portalctl(raw, "--json", "change", "approve", str(change.pk), "-g",
                         "business", PORTAL_STEP_UP_CODE=totp_code())
    assert approved.code == 0, approved.err
    assert "second factor checked (totp)" in approved.err
    factor = AuditEvent.objects.get(action="gate.approved").after["second_factor"]
    assert factor["kind"] == "totp" and factor["via"] == "token" and factor["fresh"]
    token.refresh_from_db()
    assert token.second_factor == "totp"
    assert AuditEvent.objects.filter(action="token.step_up.failed").count() == 1
    assert AuditEvent.objects.filter(action="second_factor.refused",
                                     after__code="step_up_required").count() == 2
