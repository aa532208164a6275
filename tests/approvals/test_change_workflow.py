"""Gates from policy, decisions and segregation of duties, through the services."""

import pytest

from approvals import services
from approvals.models import ChangeRequest, Gate
from audit.models import AuditEvent
from core.errors import AlreadyDecided, Invalid, NotEligible, NotReady, SelfApproval
from tests.factories import request_change


def gate_roles(change):
    return {g.role: g.required for g in change.gates.all()}


def test_staging_change_gets_tech_lead_and_qa_gates(demo):
    change = request_change(demo.engineer, "staging")
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert gate_roles(change) == {"tech_lead": 1, "qa": 1}


def test_production_standard_change_gets_cab_security_and_business_gates(demo):
    change = request_change(demo.engineer, "production")
    assert gate_roles(change) == {"cab": 1, "security": 1, "business": 1}


def test_production_hotfix_needs_tech_lead_and_cab(demo):
    change = request_change(demo.engineer, "production", change_type="hotfix")
    assert gate_roles(change) == {"tech_lead": 1, "cab": 1}


def test_emergency_change_needs_one_emergency_approval(demo):
    change = request_change(demo.engineer, "production", change_type="emergency",
                            rollback_plan="Redeploy the previous release")
    assert gate_roles(change) == {"emergency": 1}


def test_development_change_needs_no_approval(demo):
    change = request_change(demo.engineer, "development")
    assert gate_roles(change) == {}
    assert change.status == ChangeRequest.Status.APPROVED


def test_requesting_writes_audit_events(demo):
    change = request_change(demo.engineer, "staging")
    actions = list(AuditEvent.objects.filter(object_type="changerequest", object_id=str(change.pk))
                   .order_by("id").values_list("action", "actor_name"))
    # The risk score is assessed in the submission, before it is recorded (docs/cab.md).
    assert actions == [("change.created", "engineer"), ("change.risk_assessed", "engineer"),
                       ("change.submitted", "engineer")]


def test_person_without_request_permission_cannot_request(demo):
    with pytest.raises(Exception) as exc:
        request_change(demo.qa, "production")
    assert getattr(exc.value, "code", "") == "not_permitted"
    assert not ChangeRequest.objects.exists()


def test_requester_cannot_approve_own_change_and_the_refusal_is_audited(demo):
    change = request_change(demo.techlead, "staging")
    with pytest.raises(SelfApproval):
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    change.refresh_from_db()
    assert change.gates.get(role="tech_lead").status == Gate.Status.PENDING
    refusal = AuditEvent.objects.get(action="gate.approved.refused")
    assert refusal.actor_name == "techlead"
    assert refusal.after["code"] == "self_approval"


def test_approver_without_object_permission_is_not_eligible(demo):
    change = request_change(demo.engineer, "staging")
    with pytest.raises(NotEligible):
        services.gate_approve(actor=demo.qa, change=change, role="tech_lead")
    with pytest.raises(NotEligible):
        services.gate_approve(actor=demo.cab, change=change, role="qa")
    assert AuditEvent.objects.filter(action="gate.approved.refused").count() == 2


def test_approving_every_gate_approves_the_change(demo):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead", comment="LGTM")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    services.gate_approve(actor=demo.qa, change=change, role="qa", comment="Tested")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.APPROVED
    approvals = AuditEvent.objects.filter(action="gate.approved").order_by("id")
    assert [(e.actor_name, e.after["role"], e.after["comment"]) for e in approvals] == [
        ("techlead", "tech_lead", "LGTM"), ("qa", "qa", "Tested")]


def test_one_person_decides_at_most_one_gate_of_a_change(demo):
    from guardian.shortcuts import assign_perm

    assign_perm("catalog.approve_qa", demo.techlead, change_env := demo_env("staging"))
    assert change_env
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    with pytest.raises(NotEligible) as exc:
        services.gate_approve(actor=demo.techlead, change=change, role="qa")
    assert exc.value.code == "one_gate_per_person"
    assert change.gates.get(role="qa").status == Gate.Status.PENDING


def demo_env(slug):
    from catalog.models import Environment

    return Environment.objects.get(slug=slug)


def test_rejection_needs_a_comment_and_ends_the_change(demo):
    change = request_change(demo.engineer, "staging")
    with pytest.raises(Invalid):
        services.gate_reject(actor=demo.qa, change=change, role="qa", comment="  ")
    services.gate_reject(actor=demo.qa, change=change, role="qa", comment="Fails smoke test")
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.REJECTED
    with pytest.raises(AlreadyDecided):
        services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")


def test_deploy_is_refused_while_a_gate_is_pending(demo):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    with pytest.raises(NotReady) as exc:
        services.change_request_deploy(actor=demo.engineer, change=change)
    assert [b["code"] for b in exc.value.blockers] == ["gate_qa"]
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL


def test_deploy_is_refused_in_a_locked_environment(demo):
    env = demo_env("development")
    env.locked, env.lock_reason = True, "incident INC-42"
    env.save()
    change = request_change(demo.engineer, "development")
    with pytest.raises(NotReady) as exc:
        services.change_request_deploy(actor=demo.engineer, change=change)
    assert exc.value.blockers[0]["code"] == "environment_locked"
    assert "INC-42" in exc.value.blockers[0]["message"]


def test_deploy_of_an_approved_change_queues_a_deployment(demo):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role="tech_lead")
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.DEPLOYING
    assert deployment.status == "queued"
    names = [s.name for s in deployment.steps.all()]
    # SOP 4.1 phase 2: every step is planned, health checked before and after.
    assert {"pre_health_check", "stop", "backup", "deploy", "migrate", "start",
            "health_check"} <= set(names)
    assert names[0] == "pre_health_check"
    assert AuditEvent.objects.filter(action="deployment.queued",
                                     object_id=str(deployment.pk)).exists()


@pytest.mark.parametrize("environment,change_type,gates", [
    ("development", "standard", {}),
    ("development", "hotfix", {}),
    ("development", "emergency", {}),
    ("staging", "standard", {"tech_lead": 1, "qa": 1}),
    ("staging", "hotfix", {"tech_lead": 1, "qa": 1}),
    ("staging", "emergency", {"emergency": 1}),
    ("production", "standard", {"cab": 1, "security": 1, "business": 1}),
    ("production", "hotfix", {"tech_lead": 1, "cab": 1}),
    ("production", "emergency", {"emergency": 1}),
])
def test_every_default_policy_row_gives_its_gates(demo, environment, change_type, gates):
    change = request_change(demo.oncall, environment, change_type=change_type,
                            rollback_plan="Redeploy the previous release")
    assert gate_roles(change) == gates


@pytest.mark.parametrize("change_type,conditions", [
    ("standard", {"requires_window", "requires_promotion", "requires_on_call",
                  "requires_rollback_plan"}),
    ("hotfix", {"requires_on_call", "requires_rollback_plan"}),
    ("emergency", {"requires_rollback_plan", "passes_freeze", "opens_review"}),
])
def test_production_policies_carry_their_other_conditions(demo, change_type, conditions):
    from approvals.models import ApprovalPolicy

    policy = ApprovalPolicy.objects.get(environment__slug="production", change_type=change_type)
    flags = {"requires_window", "requires_promotion", "requires_on_call",
             "requires_rollback_plan", "passes_freeze", "opens_review"}
    assert {f for f in flags if getattr(policy, f)} == conditions
