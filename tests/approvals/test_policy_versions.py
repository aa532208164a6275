"""Policy versions: the rows become version 1, a proposal passes its own gates (never
its proposer's), takes effect at its time and is compiled into the rows; decisions carry
the digest of the version they were taken under."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from approvals import services
from approvals.models import ApprovalPolicy, Gate, PolicyVersion
from approvals.policy import document as policy_document
from approvals.policy.rows import render_rows
from audit.models import AuditEvent
from core import clock
from core.errors import SelfApproval
from tests.factories import ReleaseFactory, request_change


def with_rules(text: str, *, rules=None, restrictions=None, examples=None,
               policy_changes=None) -> str:
    data = yaml.safe_load(text)
    if rules is not None:
        data["rules"] = rules
    if restrictions is not None:
        data["start_restrictions"] = restrictions
    if examples is not None:
        data["examples"] = examples
    if policy_changes is not None:
        data["policy_changes"] = policy_changes
    return yaml.safe_dump(data, sort_keys=False)


PAYMENTS = [{"name": "payments-security", "when": '"payments" in change.applications',
             "gates": {"security": 1}, "reason": "payments handle card data"}]


def adopt(demo, text: str, **kwargs) -> PolicyVersion:
    """Propose ``text`` as techlead and approve it as cab and security."""
    version = services.policy_propose(actor=demo.techlead, text=text, **kwargs)
    for role, person in (("cab", demo.cab), ("security", demo.security)):
        version = services.policy_decide(actor=person, version=version, role=role,
                                          decision="approved")
    return version


def test_the_demo_starts_with_the_rows_as_an_active_first_version(demo):
    version = PolicyVersion.objects.get()
    assert (version.number, version.status) == (1, PolicyVersion.Status.ACTIVE)
    document = policy_document.parse(version.document)
    assert version.digest == document.digest
    production = document.data["environments"]["production"]
    assert production["change_types"]["standard"]["gates"] == {
        "cab": 1, "security": 1, "business": 1}
    assert production["deploy"] == ["on-call"]
    assert [w["weekday"] for w in production["windows"]] == ["tuesday", "thursday"]
    # Its examples pass, and the rows written again give the same document.
    assert policy_document.parse(render_rows()).digest == version.digest
    assert AuditEvent.objects.filter(action="policy.activated").count() == 1


def test_a_proposal_takes_its_gates_from_the_active_document_and_binds_only_when_approved(
        demo):
    active = PolicyVersion.objects.get()
    text = with_rules(active.document, rules=PAYMENTS,
                      policy_changes={"gates": {"cab": 2, "security": 1}})
    proposed = services.policy_propose(actor=demo.techlead, text=text,
                                       summary="payments need security")
    assert proposed.status == PolicyVersion.Status.PROPOSED
    assert proposed.gates == {"cab": 1, "security": 1}  # from v1, not from itself
    assert proposed.based_on == active
    assert services.active_version() == active
    event = AuditEvent.objects.get(action="policy.proposed")
    assert event.after["policy_digest"] == proposed.digest
    assert event.after["active_policy_digest"] == active.digest


def test_the_proposer_cannot_approve_their_own_policy_change(demo):
    from django.contrib.auth.models import Permission
    # cab may propose too, here; still, not approve what cab proposed.
    demo.cab.user_permissions.add(Permission.objects.get(codename="add_policyversion"))
    text = with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS)
    proposed = services.policy_propose(actor=demo.cab, text=text)
    with pytest.raises(SelfApproval):
        services.policy_decide(actor=demo.cab, version=proposed, role="cab",
                               decision="approved")
    proposed.refresh_from_db()
    assert proposed.status == PolicyVersion.Status.PROPOSED
    assert not proposed.approvals.exists()
    refused = AuditEvent.objects.get(action="policy.approved.refused")
    assert refused.after["code"] == "self_approval"


def test_someone_who_may_not_decide_the_gate_is_refused(demo):
    text = with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS)
    proposed = services.policy_propose(actor=demo.techlead, text=text)
    with pytest.raises(Exception) as refused:
        services.policy_decide(actor=demo.qa, version=proposed, role="cab",
                               decision="approved")
    assert refused.value.code == "not_eligible"


def test_a_document_whose_examples_fail_cannot_be_proposed(demo):
    text = with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS, examples=[
        {"name": "payments need security",
         "facts": {"at": "2026-01-05T12:00:00Z",
                   "change": {"environment": "staging", "change_type": "standard",
                              "applications": ["payments"]}},
         "expect": {"gates": {"qa": 1, "tech_lead": 1}}}])
    with pytest.raises(services.ExamplesFailed) as failed:
        services.policy_propose(actor=demo.techlead, text=text)
    assert failed.value.code == "policy_examples_failed"
    assert "payments need security" in failed.value.detail
    assert PolicyVersion.objects.count() == 1


def test_a_document_naming_an_unknown_environment_or_group_is_refused(demo):
    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["environments"]["qa-lab"] = {"change_types": {}}
    data["environments"]["production"]["deploy"] = ["nobody-group"]
    with pytest.raises(policy_document.PolicyInvalid) as refused:
        services.policy_propose(actor=demo.techlead, text=yaml.safe_dump(data))
    assert "document.environments.qa-lab: no such environment" in refused.value.problems
    assert any("nobody-group" in p for p in refused.value.problems)


def test_an_approved_version_becomes_active_at_its_time_and_is_compiled_into_the_rows(
        demo, settings):
    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["environments"]["staging"]["change_types"]["standard"]["gates"] = {
        "tech_lead": 1, "qa": 2}
    data["examples"] = []
    later = clock.now() + timedelta(hours=2)
    version = adopt(demo, yaml.safe_dump(data), effective_at=later)
    assert version.status == PolicyVersion.Status.APPROVED
    assert services.active_version().number == 1
    staging = ApprovalPolicy.objects.get(environment__slug="staging", change_type="standard")
    assert {g.role: g.required for g in staging.gates.all()} == {"tech_lead": 1, "qa": 1}
    with clock.use(lambda: later + timedelta(minutes=1)):
        assert services.active_version().number == 2
    assert {g.role: g.required for g in staging.gates.all()} == {"tech_lead": 1, "qa": 2}
    old = PolicyVersion.objects.get(number=1)
    assert old.status == PolicyVersion.Status.SUPERSEDED
    activated = AuditEvent.objects.filter(action="policy.activated").order_by("pk").last()
    assert activated.after["policy_digest"] == version.digest
    assert activated.before["policy_digest"] == old.digest


def test_a_rule_adds_a_gate_at_submission_and_the_event_names_the_version(demo):
    version = adopt(demo, with_rules(PolicyVersion.objects.get().document, rules=PAYMENTS,
                                     examples=[]))
    assert version.status == PolicyVersion.Status.ACTIVE
    from catalog.models import Application
    payments = Application.objects.create(slug="payments", name="Payments")
    change = request_change(demo.engineer, "staging",
                            release=ReleaseFactory(application=payments))
    assert {g.role: g.required for g in change.gates.all()} == {
        "tech_lead": 1, "qa": 1, "security": 1}
    submitted = AuditEvent.objects.get(action="change.submitted", object_id=str(change.pk))
    assert submitted.after["policy_digest"] == version.digest
    assert submitted.after["policy_version"] == 2
    assert submitted.after["policy_rules"] == ["payments-security"]
    assert submitted.after["policy_facts"]["change"]["applications"] == ["payments"]
    other = request_change(demo.engineer, "staging")
    assert not Gate.objects.filter(change=other, role="security").exists()
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    decided = AuditEvent.objects.get(action="gate.approved", object_id=str(change.pk))
    assert decided.after["policy_digest"] == version.digest


def test_a_decision_rechecked_after_the_policy_changed_verifies_against_the_old_version(
        demo, capsys):
    v1 = PolicyVersion.objects.get()
    from catalog.models import Application
    payments = Application.objects.create(slug="payments", name="Payments")
    before = request_change(demo.engineer, "staging",
                            release=ReleaseFactory(application=payments))
    assert not before.gates.filter(role="security").exists()
    adopt(demo, with_rules(v1.document, rules=PAYMENTS, examples=[]))
    after = request_change(demo.engineer, "staging",
                           release=ReleaseFactory(application=payments))
    assert after.gates.filter(role="security").exists()
    call_command("verify_audit", "--policies")
    out = capsys.readouterr().out
    assert "0 disagree" in out
    # Under today's policy the first change would need security; under v1 it did not.
    from approvals.policy_checks import policy_events, recheck_events
    results = {r.change_id: r for r in recheck_events(policy_events())
               if r.action == "change.submitted"}
    assert results[str(before.pk)].version == 1 and results[str(before.pk)].ok
    assert results[str(after.pk)].version == 2 and results[str(after.pk)].ok


def test_verify_audit_names_a_decision_its_version_would_not_have_taken(demo, capsys):
    from django.db import connection

    change = request_change(demo.engineer, "staging")
    event = AuditEvent.objects.get(action="change.submitted", object_id=str(change.pk))
    # Gates set outside the policy (the rows edited by hand, say): recorded as they were.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE portal_auditevent DISABLE TRIGGER USER")
        after = {**event.after, "gates": {"qa": 1}}
        AuditEvent.objects.filter(pk=event.pk).update(after=after)
        cursor.execute("ALTER TABLE portal_auditevent ENABLE TRIGGER USER")
    from approvals.policy_checks import verify_policies
    agreed, lines = verify_policies()
    assert not agreed
    assert f"event {event.pk} change.submitted change {change.pk}" in lines[1]
    assert "policy v1 says {'qa': 1, 'tech_lead': 1}" in lines[1]


def test_policy_commands_export_test_and_import(demo, tmp_path, capsys):
    call_command("policy", "export", "--output", str(tmp_path / "policy.yaml"))
    exported = (tmp_path / "policy.yaml").read_text()
    assert exported == PolicyVersion.objects.get().document
    call_command("policy", "test", str(tmp_path / "policy.yaml"))
    assert "9 of 9 examples pass" in capsys.readouterr().out
    broken = with_rules(exported, examples=[
        {"name": "wrong", "facts": {"at": "2026-01-05T12:00:00Z",
                                    "change": {"environment": "staging"}},
         "expect": {"gates": {"cab": 1}}}])
    (tmp_path / "broken.yaml").write_text(broken)
    with pytest.raises(CommandError):
        call_command("policy", "test", str(tmp_path / "broken.yaml"))
    with pytest.raises(CommandError, match="policy_examples_failed"):
        call_command("policy", "import", str(tmp_path / "broken.yaml"), "--user", "techlead")
    (tmp_path / "new.yaml").write_text(with_rules(exported, rules=PAYMENTS))
    call_command("policy", "import", str(tmp_path / "new.yaml"), "--user", "techlead")
    assert "proposed policy v2" in capsys.readouterr().out
    assert PolicyVersion.objects.get(number=2).status == PolicyVersion.Status.PROPOSED


def test_the_beat_task_makes_a_due_version_active(demo, settings):
    from approvals import tasks
    from portal.celery import app

    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["environments"]["staging"]["change_types"]["hotfix"]["gates"] = {"tech_lead": 2}
    data["examples"] = []
    soon = clock.now() + timedelta(minutes=5)
    version = adopt(demo, yaml.safe_dump(data), effective_at=soon)
    assert version.status == PolicyVersion.Status.APPROVED
    with clock.use(lambda: soon):
        tasks.policies_activate_due()
    version.refresh_from_db()
    assert version.status == PolicyVersion.Status.ACTIVE and version.activated_at == soon
    entry = settings.CELERY_BEAT_SCHEDULE["activate-due-policies"]
    assert entry["task"] == "approvals.tasks.policies_activate_due"
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks


def test_who_may_deploy_follows_the_document_once_active(demo):
    from catalog.models import Environment
    from catalog.permissions import has_env_perm

    data = yaml.safe_load(PolicyVersion.objects.get().document)
    data["environments"]["staging"]["deploy"] = ["on-call"]  # engineers no longer
    data["examples"] = []
    staging = Environment.objects.get(slug="staging")
    assert has_env_perm(demo.engineer, "deploy", staging)
    adopt(demo, yaml.safe_dump(data))
    assert not has_env_perm(demo.engineer, "deploy", staging)
    assert has_env_perm(demo.oncall, "deploy", staging)
    activated = AuditEvent.objects.filter(action="policy.activated").order_by("pk").last()
    assert activated.after["compiled"]["grants"] == [
        {"environment": "staging", "permission": "deploy", "group": "engineers",
         "granted": False}]
