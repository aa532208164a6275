"""A deployment that waits in the queue starts later, when its target frees: before it
does, its approvals are checked again, as at every other start. If CI reported an
approver as an author or merger meanwhile, or the approvals no longer match what it
would run, it never runs a step: its gates reopen, the change waits for approval
again, the deployment is cancelled with the reason in its log and audit trail, and the
queue moves on to the next one.

The Django admin acts in nobody's name: a person's second factors, e-mail addresses,
single-sign-on logins, their tokens and sessions are shown and may be deleted (on the
record as access changes), never added or edited for them; a password an administrator
sets is on the record too."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from allauth.mfa.models import Authenticator
from django.db import connection, transaction
from django.test import Client, TestCase

from approvals import services as approvals
from approvals.models import ChangeRequest, Gate
from core.models import AuditEvent
from deployments import services as engine
from deployments.models import Deployment, DeploymentStep
from tests.conftest import PASSWORD, wait_for
from tests.factories import ReleaseFactory, executor_app, request_change


def approved(demo, app, version: str) -> ChangeRequest:
    """A staging change of ``app`` ``version``, approved by the tech lead and QA."""
    change = request_change(demo.engineer, "staging",
                            release=ReleaseFactory(application=app, version=version))
    approvals.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    approvals.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    return change


def deploy(api, demo, change) -> dict:
    response = api(demo.engineer).post(f"/api/v1/changes/{change.pk}/deploy")
    assert response.status_code == 202, response.content
    return response.json()


def ci_reports(api, demo, change, **people) -> None:
    response = api(demo.ci).post("/api/v1/hooks/ci", {"release": change.release_id, **people},
                                 format="json")
    assert response.status_code == 200, response.content


def never_ran(deployment: Deployment) -> None:
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.CANCELLED
    assert deployment.started_at is None
    assert not DeploymentStep.objects.filter(deployment=deployment).exclude(
        status="pending").exists()
    assert not AuditEvent.objects.filter(action="deployment.started",
                                         object_id=str(deployment.pk)).exists()


def refused_and_reopened(change, deployment, *, roles: set[str], words: str) -> None:
    """The refusal as the record and the people see it."""
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert {g.role for g in change.gates.filter(status=Gate.Status.PENDING)} == roles
    assert words in deployment.failure_reason
    assert deployment.log_lines.filter(level="error", message__contains=words).exists()
    cancelled = AuditEvent.objects.get(action="deployment.cancelled",
                                       object_id=str(deployment.pk))
    assert words in cancelled.reason
    refused = AuditEvent.objects.get(action="change.start_refused", object_id=str(change.pk))
    assert refused.after["deployment"] == deployment.pk and words in refused.reason
    assert refused.before["status"] == "deploying" and refused.after["status"] == \
        "pending_approval"
    assert {e.after["role"] for e in AuditEvent.objects.filter(
        action="approval.invalidated", object_id=str(change.pk))} == roles


def _end(deployment, status="succeeded"):
    """End ``deployment`` as its worker does; what runs after commit runs too."""
    with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("environment").get(
            pk=deployment.pk)
        engine._finish(locked, status, "")


def _running(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(status="running", attempts=1)
    deployment.refresh_from_db()
    return deployment


# --- with a real worker: the queue's promotion ------------------------------------------------

@pytest.fixture
def held_command(tmp_path):
    """A deploy command that records the version it deploys, then holds its step until the
    test opens the gate file (an event, not a pause); bounded at 60 s."""
    ran, gate = tmp_path / "ran.log", tmp_path / "gate"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import pathlib, sys, time\n"
        f"open({str(ran)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    if time.monotonic() > deadline:\n"
        "        sys.exit(1)\n"
        "    time.sleep(0.05)\n")
    return f"{sys.executable} {script} {{version}}", ran, gate


def ran_versions(ran: Path) -> list[str]:
    return ran.read_text().splitlines() if ran.exists() else []


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_queued_deployment_never_runs_after_ci_names_its_approver_an_author(
        demo, api, celery_worker_process, held_command):
    command, ran, gate = held_command
    app, _ = executor_app("command", {"commands": {"deploy": command}, "timeout": 90})
    first, second, third = (approved(demo, app, v) for v in ("1.0.0", "1.1.0", "1.2.0"))

    head = deploy(api, demo, first)
    assert head["queued"] is False
    wait_for(lambda: ran_versions(ran) == ["1.0.0"], timeout=60)  # the head is in its step
    waiting = deploy(api, demo, second)
    behind = deploy(api, demo, third)
    assert (waiting["queued"], waiting["queue_position"]) == (True, 1)
    assert (behind["queued"], behind["queue_position"]) == (True, 2)

    # While the second waits, CI reports that its tech lead approver wrote its commits.
    ci_reports(api, demo, second, authors=["techlead"])
    gate.touch()  # the head's step ends; the target frees

    last = Deployment.objects.get(pk=behind["deployment"])
    wait_for(lambda: Deployment.objects.get(pk=last.pk).is_final, timeout=90)
    refused = Deployment.objects.get(pk=waiting["deployment"])
    never_ran(refused)
    assert ran_versions(ran) == ["1.0.0", "1.2.0"]  # 1.1.0's command never ran
    refused_and_reopened(second, refused, roles={"tech_lead"},
                         words="techlead wrote commits in")
    assert AuditEvent.objects.get(action="approval.invalidated",
                                  object_id=str(second.pk)).after["code"] == "author"

    # The queue moved on: a deployment whose facts did not change still starts from it.
    last.refresh_from_db()
    assert last.status == Deployment.Status.SUCCEEDED, last.failure_reason
    third.refresh_from_db()
    assert third.status == ChangeRequest.Status.DEPLOYED
    assert Deployment.objects.get(pk=head["deployment"]).status == "succeeded"

    # The API and the change page say why.
    body = api(demo.engineer).get(f"/api/v1/changes/{second.pk}/").json()
    assert body["status"] == "pending_approval" and "gate_tech_lead" in body["blockers"]
    [lead] = [g for g in body["gates"] if g["gate"] == "tech_lead"]
    assert lead["status"] == "pending"
    assert "techlead wrote commits in" in lead["approvals"][0]["withdrawn_reason"]
    assert body["deployment"] == refused.pk
    detail = api(demo.engineer).get(f"/api/v1/deployments/{refused.pk}/").json()
    assert detail["status"] == "cancelled"
    assert "techlead wrote commits in" in detail["failure_reason"]
    client = Client()
    client.force_login(demo.engineer)
    page = client.get(f"/changes/{second.pk}/").content.decode()
    assert "not started: the Tech lead approval by techlead no longer counts" in page
    assert f'action="/changes/{second.pk}/deploy"' not in page


@pytest.mark.django_db(transaction=True)
def test_a_ci_report_racing_the_promotion_never_lets_the_deployment_run(demo, api,
                                                                       monkeypatch):
    """The head's end (which promotes the next one) and CI's report, in two threads and
    transactions at once: whichever commits first, the waiting deployment never runs.
    No worker takes it here (its message is kept back); the test claims it as one would,
    after both."""
    sent = []
    monkeypatch.setattr(engine, "_enqueue", lambda pk, task_id: sent.append(pk) or True)
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    ci = api(demo.ci)
    start = threading.Barrier(2)
    errors = []

    def end_head():
        try:
            start.wait(timeout=10)
            with transaction.atomic():
                locked = (Deployment.objects.select_for_update()
                          .select_related("environment").get(pk=head.pk))
                engine._finish(locked, Deployment.Status.SUCCEEDED)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def report():
        try:
            start.wait(timeout=10)
            answer = ci.post("/api/v1/hooks/ci", {"release": second.release_id,
                                                  "authors": ["techlead"]}, format="json")
            assert answer.status_code == 200, answer.content
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=end_head), threading.Thread(target=report)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []

    assert engine.deployment_run(deployment_id=queued.pk) is None

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"tech_lead"},
                         words="techlead wrote commits in")


# --- without a worker: each start of a queued deployment --------------------------------------

@pytest.mark.django_db
def test_a_merger_reported_after_promotion_is_caught_when_the_worker_claims_it(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    assert not queued.holds_target
    _end(head)
    queued.refresh_from_db()
    assert queued.holds_target and queued.status == "queued"  # promoted, not yet claimed

    ci_reports(api, demo, second, mergers=["qa"])
    assert engine.deployment_run(deployment_id=queued.pk) is None

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"qa"}, words="qa merged commits in")


@pytest.mark.django_db
def test_a_queued_deployment_whose_inputs_were_changed_behind_the_approvals_never_runs(
        demo):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    # Someone with the database's hands points the waiting deployment at another command.
    tampered = {**queued.inputs, "executor_settings": {"commands": {"deploy": "curl evil"}}}
    Deployment.objects.filter(pk=queued.pk).update(inputs=tampered)

    _end(head)

    never_ran(queued)
    refused_and_reopened(second, queued, roles={"tech_lead", "qa"},
                         words="approval was given before the executor changed")
    invalidated = AuditEvent.objects.filter(action="approval.invalidated",
                                            object_id=str(second.pk))
    assert all(e.after["changed"] == ["executor"] for e in invalidated)


@pytest.mark.django_db
def test_the_sweep_promoting_a_queue_checks_too_and_moves_on(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second, third = (approved(demo, app, v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    refused = approvals.change_request_deploy(actor=demo.engineer, change=second)
    fine = approvals.change_request_deploy(actor=demo.engineer, change=third)
    ci_reports(api, demo, second, authors=["qa"])
    # The head ended without starting the next one (a repair in the database).
    Deployment.objects.filter(pk=head.pk).update(status="failed")

    with TestCase.captureOnCommitCallbacks(execute=True):
        engine.deployments_resume_stale()

    never_ran(refused)
    refused_and_reopened(second, refused, roles={"qa"}, words="qa wrote commits in")
    fine.refresh_from_db()
    assert fine.holds_target and fine.status == "queued"


@pytest.mark.django_db
def test_a_queued_deployment_of_a_change_that_is_no_longer_deploying_never_runs(demo):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    # The change was cancelled in the database while its deployment waited.
    ChangeRequest.objects.filter(pk=second.pk).update(status="cancelled")

    _end(head)

    never_ran(queued)
    assert "is cancelled, not deploying" in queued.failure_reason
    assert AuditEvent.objects.get(action="deployment.cancelled",
                                  object_id=str(queued.pk)).actor_kind == "system"


@pytest.mark.django_db
def test_facts_that_do_not_touch_the_approvers_let_the_queued_deployment_start(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    head = _running(approvals.change_request_deploy(actor=demo.engineer, change=first))
    queued = approvals.change_request_deploy(actor=demo.engineer, change=second)
    ci_reports(api, demo, second, authors=["someone-else"], mergers=["engineer"])

    _end(head)

    assert engine.deployment_run(deployment_id=queued.pk) == Deployment.Status.SUCCEEDED
    second.refresh_from_db()
    assert second.status == ChangeRequest.Status.DEPLOYED
    assert not AuditEvent.objects.filter(action__in=["approval.invalidated",
                                                     "change.start_refused"]).exists()


@pytest.mark.django_db
def test_a_rollback_from_the_queue_is_not_held_by_the_changes_approvals(demo, api):
    app, _ = executor_app("command", {"commands": {}})
    first, second = approved(demo, app, "1.0.0"), approved(demo, app, "1.1.0")
    good = approvals.change_request_deploy(actor=demo.engineer, change=first)
    assert engine.deployment_run(deployment_id=good.pk) == Deployment.Status.SUCCEEDED
    bad = _running(approvals.change_request_deploy(actor=demo.engineer, change=second))
    ci_reports(api, demo, second, authors=["techlead"])

    rollback = engine.deployment_rollback(actor=demo.oncall, deployment=bad,
                                          reason="errors are up")

    assert engine.deployment_run(deployment_id=rollback.pk) is not None
    rollback.refresh_from_db()
    assert rollback.status != Deployment.Status.CANCELLED
    assert not AuditEvent.objects.filter(action="change.start_refused").exists()


# --- The admin acts in nobody's name: a person's identity records are seen and removed, -----
# --- never made or edited for them; deletions and passwords set there are on the record ------

@pytest.fixture
def admin_client(demo) -> Client:
    client = Client()
    assert client.login(username="admin", password=PASSWORD)  # as the suite signs in
    return client


def since(mark: int, action: str):
    return AuditEvent.objects.filter(id__gt=mark, action=action)


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db
def test_the_admin_cannot_add_or_edit_someones_second_factor(admin_client, demo):
    factor = Authenticator.objects.get(user=demo.cab, type="totp")
    stored, count = dict(factor.data), Authenticator.objects.count()
    mark = last_event_id()

    # The administrator's own authenticator app, enrolled on CAB's account: refused.
    assert admin_client.get("/admin/mfa/authenticator/add/").status_code == 403
    answer = admin_client.post("/admin/mfa/authenticator/add/", {
        "user": demo.cab.pk, "type": "totp", "data": '{"secret": "ADMINSOWNSECRET234"}',
        "created_at_0": "2026-01-01", "created_at_1": "00:00:00"})
    assert answer.status_code == 403
    # ... nor swapped into the factor CAB already has.
    answer = admin_client.post(f"/admin/mfa/authenticator/{factor.pk}/change/", {
        "user": demo.cab.pk, "type": "totp", "data": '{"secret": "ADMINSOWNSECRET234"}'})
    assert answer.status_code == 403
    # A passkey (it signs in without a password) likewise.
    answer = admin_client.post("/admin/mfa/authenticator/add/", {
        "user": demo.cab.pk, "type": "webauthn", "data": '{"credential": {}}'})
    assert answer.status_code == 403

    factor.refresh_from_db()
    assert factor.data == stored and Authenticator.objects.count() == count
    assert not Authenticator.objects.filter(user=demo.cab, type="webauthn").exists()
    assert not since(mark, "mfa.authenticator_added").exists()
    # Seen, without its secret.
    page = admin_client.get(f"/admin/mfa/authenticator/{factor.pk}/change/")
    assert page.status_code == 200
    assert stored["secret"] not in page.content.decode()
    assert "Add authenticator" not in admin_client.get(
        "/admin/mfa/authenticator/").content.decode()


@pytest.mark.django_db
def test_deleting_someones_second_factor_in_the_admin_is_an_audited_access_change(
        admin_client, demo):
    factor = Authenticator.objects.get(user=demo.cab, type="totp")
    codes = Authenticator.objects.create(user=demo.cab, type="recovery_codes",
                                         data={"seed": "s33d-never-on-the-record"})
    mark = last_event_id()

    answer = admin_client.post(f"/admin/mfa/authenticator/{factor.pk}/delete/", {"post": "yes"})

    assert answer.status_code == 302
    assert not Authenticator.objects.filter(pk__in=[factor.pk, codes.pk]).exists()
    event = since(mark, "access.second_factor_deleted").get()
    assert event.actor_name == "admin" and event.object_id == str(factor.pk)
    assert event.before["user"] == "cab" and event.before["type"] == "totp"
    # Recovery codes without a factor go with it, as when a person removes their own.
    assert event.after["also_deleted"] == ["recovery_codes"]
    recorded = str(event.before) + str(event.after)
    assert "s33d" not in recorded and "secret" not in recorded

    # The list's bulk deletion goes the same way.
    other = Authenticator.objects.get(user=demo.security, type="totp")
    answer = admin_client.post("/admin/mfa/authenticator/", {
        "action": "delete_selected", "_selected_action": [other.pk], "post": "yes"})
    assert answer.status_code == 302
    assert not Authenticator.objects.filter(pk=other.pk).exists()
    assert since(mark, "access.second_factor_deleted").filter(
        object_id=str(other.pk), actor_name="admin").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["account/emailaddress", "socialaccount/socialaccount",
                                  "socialaccount/socialtoken", "usersessions/usersession",
                                  "socialaccount/socialapp"])
def test_the_admin_cannot_make_other_identity_records_for_a_person(admin_client, demo, path):
    # An e-mail address, a single-sign-on login, its token or a session of someone else's,
    # or an identity provider of the administrator's own.
    listed = admin_client.get(f"/admin/{path}/")
    assert listed.status_code == 200 and f'href="/admin/{path}/add/"' not in \
        listed.content.decode()
    mark = last_event_id()
    answer = admin_client.post(f"/admin/{path}/add/", {
        "user": demo.cab.pk, "email": "admin@example.com", "verified": "on",
        "primary": "on", "provider": "openid_connect", "uid": "admins-own-subject",
        "token": "t", "ip": "127.0.0.1", "user_agent": "x", "session_key": "k",
        "name": "sso", "provider_id": "sso", "client_id": "admins-idp", "secret": "s",
        "settings": '{"server_url": "https://idp.admin.example"}'})
    assert answer.status_code == 403
    from allauth.account.models import EmailAddress
    from allauth.socialaccount.models import SocialAccount

    assert not EmailAddress.objects.filter(user=demo.cab, email="admin@example.com").exists()
    assert not SocialAccount.objects.filter(uid="admins-own-subject").exists()
    from allauth.socialaccount.models import SocialApp

    assert not SocialApp.objects.filter(client_id="admins-idp").exists()
    assert not AuditEvent.objects.filter(id__gt=mark).exclude(
        action__startswith="auth.").exists()


@pytest.mark.django_db
def test_an_email_address_and_a_linked_login_are_edited_by_nobody_and_deleted_on_the_record(
        admin_client, demo):
    from allauth.account.models import EmailAddress
    from allauth.socialaccount.models import SocialAccount

    email = EmailAddress.objects.create(user=demo.cab, email="cab@example.com",
                                        primary=True, verified=True)
    linked = SocialAccount.objects.create(user=demo.cab, provider="openid_connect",
                                          uid="cab-subject", extra_data={"id_token": "xyz"})
    answer = admin_client.post(f"/admin/account/emailaddress/{email.pk}/change/", {
        "user": demo.cab.pk, "email": "admin@example.com", "verified": "on",
        "primary": "on"})
    assert answer.status_code == 403
    answer = admin_client.post(f"/admin/socialaccount/socialaccount/{linked.pk}/change/", {
        "user": demo.cab.pk, "provider": "openid_connect", "uid": "admins-own-subject"})
    assert answer.status_code == 403
    email.refresh_from_db()
    linked.refresh_from_db()
    assert (email.email, linked.uid) == ("cab@example.com", "cab-subject")
    mark = last_event_id()

    for path, pk in (("account/emailaddress", email.pk),
                     ("socialaccount/socialaccount", linked.pk)):
        answer = admin_client.post(f"/admin/{path}/{pk}/delete/", {"post": "yes"})
        assert answer.status_code == 302

    gone = since(mark, "access.email_address_deleted").get()
    assert gone.actor_name == "admin" and gone.before["email"] == "cab@example.com"
    unlinked = since(mark, "access.linked_account_deleted").get()
    assert unlinked.before["uid"] == "cab-subject" and "xyz" not in str(unlinked.before)


@pytest.mark.django_db
def test_a_password_set_for_someone_in_the_admin_is_an_audited_access_change(admin_client,
                                                                            demo):
    mark = last_event_id()
    answer = admin_client.post(f"/admin/auth/user/{demo.qa.pk}/password/", {
        "password1": "Admin-knows-it-now-42", "password2": "Admin-knows-it-now-42",
        "usable_password": "true"})
    assert answer.status_code == 302
    event = since(mark, "access.password_set_in_admin").get()
    assert event.actor_name == "admin" and event.after == {"user": "qa",
                                                           "usable_password": True}
    assert "pbkdf2" not in str(event.after) and "md5" not in str(event.after)
