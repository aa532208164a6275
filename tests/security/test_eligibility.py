"""Who may decide a gate is one answer (approvals.eligibility) that every road agrees with;
approvals stop counting when later facts make their approver ineligible; CAB, never the
requester nor an author, closes a post-implementation review."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client
from django.utils import timezone

from approvals import eligibility, selectors, services
from approvals.models import (
    Approval,
    ChangeRequest,
    Delegation,
    Gate,
    PostImplementationReview,
)
from audit.models import AuditEvent
from catalog.models import Environment
from core.errors import DomainError, NotReady
from deployments.models import Deployment
from notifications import services as notifications
from notifications.models import Kind, Notification
from reporting.metrics_views import dashboard_data
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db

ROLE = "tech_lead"


def person(username: str, *groups: str):
    """A new person in the demo's ``groups``, with an email (so they can be asked)."""
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "x")
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return user


def lend(delegator, delegate_to, role=ROLE, environment="staging", **extra):
    return services.delegation_create(
        actor=delegator, environment=Environment.objects.get(slug=environment), role=role,
        delegate=delegate_to, expires_at=timezone.now() + timedelta(days=1), **extra)


def page_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- The cases: (who tries, the staging change they try the tech lead gate of) ------------
# Each returns (user, change, the reason code approvals.eligibility must give).

def case_requester(demo):
    return demo.techlead, request_change(demo.techlead, "staging"), eligibility.REQUESTER


def case_author(demo):
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(
        authors=["techlead"]))
    return demo.techlead, change, eligibility.AUTHOR


def case_merger(demo):
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(
        mergers=["techlead"]))
    return demo.techlead, change, eligibility.MERGER


def case_already_decided_another_gate(demo):
    both = person("both", "tech-leads", "qa")
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=both, change=change, role="qa")
    return both, change, eligibility.ONE_GATE


def case_delegate_of_an_author(demo):
    deputy = person("deputy", "engineers")
    lend(demo.techlead, deputy)
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(
        authors=["techlead"]))
    return deputy, change, eligibility.DELEGATE_CONFLICT


def case_delegator_who_lost_the_permission(demo):
    deputy = person("deputy", "engineers")
    lend(demo.techlead, deputy)
    demo.techlead.groups.remove(Group.objects.get(name="tech-leads"))
    return deputy, request_change(demo.engineer, "staging"), eligibility.NO_AUTHORITY


def case_expired_delegation(demo):
    deputy = person("deputy", "engineers")
    delegation = lend(demo.techlead, deputy)
    Delegation.objects.filter(pk=delegation.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1))
    return deputy, request_change(demo.engineer, "staging"), eligibility.NO_AUTHORITY


def case_no_permission(demo):
    # QA may decide QA in staging, and so sees the change, but not the tech lead gate.
    return demo.qa, request_change(demo.engineer, "staging"), eligibility.NO_AUTHORITY


def case_delegate_of_a_free_holder(demo):
    deputy = person("deputy", "engineers")
    lend(demo.techlead, deputy)
    return deputy, request_change(demo.engineer, "staging"), eligibility.ELIGIBLE


def case_eligible(demo):
    return demo.techlead, request_change(demo.engineer, "staging"), eligibility.ELIGIBLE


CASES = [case_requester, case_author, case_merger, case_already_decided_another_gate,
         case_delegate_of_an_author, case_delegator_who_lost_the_permission,
         case_expired_delegation, case_no_permission, case_delegate_of_a_free_holder,
         case_eligible]


# --- The roads -----------------------------------------------------------------------------

def the_function(user, change) -> eligibility.Verdict:
    change = selectors.change_detail_queryset().get(pk=change.pk)
    gate = next(g for g in change.gates.all() if g.role == ROLE)
    return eligibility.gate_verdicts(person=selectors.person_facts(user), change=change,
                                     at=timezone.now())[gate.pk]


def the_inbox(user, change) -> bool:
    listed = selectors.inbox_gates(user).filter(change=change, role=ROLE).exists()
    gate = change.gates.get(role=ROLE)
    on_page = f'id="gate-{gate.pk}"' in page_client(user).get("/approvals/").content.decode()
    assert listed == on_page
    return listed


def the_change_page(user, change) -> bool:
    html = page_client(user).get(f"/changes/{change.pk}/").content.decode()
    return f'action="/changes/{change.pk}/gates/{ROLE}/decide"' in html


def the_api_view(api, user, change) -> tuple[bool, str]:
    body = api(user).get(f"/api/v1/changes/{change.pk}/").json()
    [gate] = [g for g in body["gates"] if g["gate"] == ROLE]
    listed = api(user).get("/api/v1/changes/").json()["results"]
    [same] = [g for c in listed if c["id"] == change.pk for g in c["gates"] if g["gate"] == ROLE]
    assert same["can_decide"] == gate["can_decide"] and same["eligibility"] == \
        gate["eligibility"]
    return gate["can_decide"], gate["eligibility"]


def the_dashboard(demo, user, change) -> bool:
    board = dashboard_data(demo.admin)
    for row in board["rows"]:
        for cell in row["columns"]:
            for waiting in cell["waiting"]:
                if waiting["change"].pk == change.pk:
                    [gate] = [g for g in waiting["gates"] if g["gate"] == "Tech lead"]
                    return user.username in gate["people"]
    raise AssertionError(f"{change.reference} is not on the dashboard")


def the_notifications(user, change) -> bool:
    # The requests written when the change was submitted (in that transaction, through
    # the outbox) asked whoever could decide then; ask again for the facts of now.
    Notification.objects.filter(kind=Kind.APPROVAL_REQUEST, change_id=change.pk).delete()
    notifications.notifications_for_change_submitted(change_id=change.pk,
                                                     status=change.status)
    asked = Notification.objects.filter(kind=Kind.APPROVAL_REQUEST, change_id=change.pk,
                                        recipient_name=user.username)
    return any("Tech lead" in n.fields["gates"] for n in asked)


class _Undo(Exception):
    pass


def the_decision_service(user, change) -> str:
    """The code the service refuses with, or "eligible" for a decision it takes (undone,
    so the other roads are tried on the same state)."""
    try:
        with transaction.atomic():
            services.gate_approve(actor=user, change=change, role=ROLE)
            raise _Undo
    except _Undo:
        return eligibility.ELIGIBLE
    except DomainError as exc:
        return exc.code


def the_api_decision(api, user, change) -> tuple[int, str]:
    response = api(user).post(f"/api/v1/changes/{change.pk}/approve", {"gate": ROLE},
                              format="json")
    return response.status_code, response.json().get("code", eligibility.ELIGIBLE)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_every_road_agrees_with_the_one_answer(demo, api, case):
    user, change, expected = case(demo)
    verdict = the_function(user, change)
    assert verdict.code == expected, verdict
    eligible = verdict.eligible

    assert the_inbox(user, change) is eligible
    assert the_change_page(user, change) is eligible
    assert the_api_view(api, user, change) == (eligible, expected)
    assert the_dashboard(demo, user, change) is eligible
    assert the_notifications(user, change) is eligible
    assert the_decision_service(user, change) == expected

    refusals = AuditEvent.objects.filter(action="gate.approved.refused").count()
    status, code = the_api_decision(api, user, change)
    assert code == expected
    change.refresh_from_db()
    if eligible:
        assert status == 200
        assert Approval.objects.get(change=change, gate__role=ROLE).approver == user
    else:
        assert status == 403
        assert not Approval.objects.filter(change=change, gate__role=ROLE).exists()
        assert change.gates.get(role=ROLE).status == Gate.Status.PENDING
        refused = AuditEvent.objects.filter(action="gate.approved.refused").order_by("-id")
        assert refused.count() == refusals + 1
        assert refused.first().after["code"] == expected


def test_a_delegate_decides_for_a_delegator_without_the_conflict(demo):
    deputy = person("deputy", "engineers")
    change = request_change(demo.engineer, "staging", release=ReleaseFactory(
        authors=["techlead"]))
    lend(demo.techlead, deputy)
    other = person("lead2", "tech-leads")
    lend(other, deputy)
    verdict = the_function(deputy, change)
    assert verdict.eligible and verdict.on_behalf_of.delegator == "lead2"
    services.gate_approve(actor=deputy, change=change, role=ROLE)
    assert Approval.objects.get(change=change).on_behalf_of == other


def test_an_approver_who_withdrew_is_asked_again_after_someone_else_approves(demo):
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=demo.techlead, change=change, role=ROLE)
    services.approval_withdraw(actor=demo.techlead, change=change, role=ROLE)
    services.gate_approve(actor=demo.qa, change=change, role="qa")

    assert the_function(demo.techlead, change).eligible
    assert the_inbox(demo.techlead, change)
    assert the_change_page(demo.techlead, change)


def test_the_home_page_counts_only_gates_i_may_decide(demo):
    request_change(demo.engineer, "staging", release=ReleaseFactory(authors=["techlead"]))
    request_change(demo.engineer, "staging")
    assert selectors.inbox_gates(demo.techlead).count() == 1
    home = page_client(demo.techlead).get("/").content.decode()
    assert '<span class="stat-number">1</span> gate<' in home


# --- Approvals hold only while their facts hold ----------------------------------------------

def approved_staging_change(demo, **kwargs):
    change = request_change(demo.engineer, "staging", **kwargs)
    services.gate_approve(actor=demo.techlead, change=change, role=ROLE)
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    change.refresh_from_db()
    return change


def ci_reports(api, demo, change, **people):
    response = api(demo.ci).post("/api/v1/hooks/ci", {"release": change.release_id, **people},
                                 format="json")
    assert response.status_code == 200, response.json()


def reopened(change, role: str, code: str) -> None:
    change.refresh_from_db()
    assert change.status == ChangeRequest.Status.PENDING_APPROVAL
    assert change.gates.get(role=role).status == Gate.Status.PENDING
    assert not Deployment.objects.filter(change_id=change.pk).exists()
    event = AuditEvent.objects.get(action="approval.invalidated")
    assert event.after["role"] == role and event.after["code"] == code


def test_ci_naming_the_approver_an_author_stops_the_deploy_button_and_reopens_the_gate(
        demo, api):
    change = approved_staging_change(demo)
    assert change.status == ChangeRequest.Status.APPROVED
    ci_reports(api, demo, change, authors=["techlead"])

    # Before anyone starts it, the API and the page say the approval no longer counts.
    body = api(demo.engineer).get(f"/api/v1/changes/{change.pk}/").json()
    assert "approval_conflict" in body["blockers"]
    page = page_client(demo.engineer).get(f"/changes/{change.pk}/").content.decode()
    assert 'data-code="approval_conflict"' in page
    assert "techlead wrote commits in" in page
    assert f'action="/changes/{change.pk}/deploy"' not in page

    response = api(demo.engineer).post(f"/api/v1/changes/{change.pk}/deploy")

    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "not_ready"
    codes = [b["code"] for b in response.json()["blockers"]]
    assert "approval_conflict" in codes and "gate_tech_lead" in codes
    reopened(change, ROLE, eligibility.AUTHOR)
    assert AuditEvent.objects.get(action="change.deploy.refused").after["code"] == \
        "approval_conflict"
    # The approver hears it through the outbox, written with the reopening.
    told = Notification.objects.get(kind=Kind.APPROVAL_REOPENED, change_id=change.pk)
    assert told.recipient_name == "techlead"
    assert "authors and mergers" in told.body
    # The API says why: the gate waits again and the approval shows why it was withdrawn.
    body = api(demo.engineer).get(f"/api/v1/changes/{change.pk}/").json()
    [gate] = [g for g in body["gates"] if g["gate"] == ROLE]
    assert gate["status"] == "pending"
    [approval] = gate["approvals"]
    assert approval["withdrawn_at"] and "techlead wrote commits in" in \
        approval["withdrawn_reason"]
    assert "gate_tech_lead" in body["blockers"] and "approval_conflict" not in body["blockers"]
    # QA's approval stands; another tech lead approves, and it deploys.
    lead2 = person("lead2", "tech-leads")
    services.gate_approve(actor=lead2, change=change, role=ROLE)
    assert services.change_request_deploy(actor=demo.engineer, change=change)


def test_the_deploy_button_on_the_page_is_refused_too(demo, api):
    change = approved_staging_change(demo)
    ci_reports(api, demo, change, mergers=["qa"])
    client = page_client(demo.engineer)
    client.get(f"/changes/{change.pk}/")
    response = client.post(f"/changes/{change.pk}/deploy", follow=True)
    assert "qa merged commits in" in response.content.decode()
    reopened(change, "qa", eligibility.MERGER)


def test_deploy_when_approved_does_not_start_on_an_approval_that_stopped_counting(demo, api):
    change = request_change(demo.engineer, "staging", deploy_when_approved=True)
    services.gate_approve(actor=demo.techlead, change=change, role=ROLE)
    ci_reports(api, demo, change, mergers=["techlead"])

    services.gate_approve(actor=demo.qa, change=change, role="qa")

    reopened(change, ROLE, eligibility.MERGER)
    deferred = AuditEvent.objects.get(action="change.start_deferred")
    assert deferred.after["code"] == "approval_conflict"
    # QA's decision stands.
    assert change.gates.get(role="qa").status == Gate.Status.APPROVED


def test_the_scheduled_start_does_not_start_on_an_approval_that_stopped_counting(demo, api):
    when = timezone.now() + timedelta(hours=1)
    change = approved_staging_change(demo, scheduled_for=when)
    assert change.status == ChangeRequest.Status.SCHEDULED
    ci_reports(api, demo, change, authors=["qa"])

    started = services.changes_start_scheduled(now=when + timedelta(minutes=1))

    assert started == []
    reopened(change, "qa", eligibility.AUTHOR)


def test_an_approval_by_a_delegate_stops_counting_when_the_delegator_is_named_author(
        demo, api):
    deputy = person("deputy", "engineers")
    lend(demo.techlead, deputy)
    change = request_change(demo.engineer, "staging")
    services.gate_approve(actor=deputy, change=change, role=ROLE)
    services.gate_approve(actor=demo.qa, change=change, role="qa")
    ci_reports(api, demo, change, authors=["techlead"])

    with pytest.raises(NotReady):
        services.change_request_deploy(actor=demo.engineer, change=change)

    reopened(change, ROLE, eligibility.DELEGATE_CONFLICT)
    assert AuditEvent.objects.get(action="approval.invalidated").after["on_behalf_of"] == \
        "techlead"


def test_facts_that_do_not_touch_the_approvers_change_nothing(demo, api):
    change = approved_staging_change(demo)
    ci_reports(api, demo, change, authors=["someone-else"])
    deployment = services.change_request_deploy(actor=demo.engineer, change=change)
    assert deployment.change_id == change.pk
    assert not AuditEvent.objects.filter(action="approval.invalidated").exists()


# --- The post-implementation review is CAB's ------------------------------------------------

def emergency_review(demo, requester, release=None) -> PostImplementationReview:
    change = request_change(requester, "production", change_type="emergency",
                            rollback_plan="Redeploy the previous release",
                            on_call=demo.oncall, release=release or ReleaseFactory())
    for item in change.checklist.filter(auto_check=""):
        services.checklist_item_set(actor=demo.oncall, change=change, item_id=item.pk,
                                    done=True, note="done")
    services.gate_approve(actor=demo.oncall, change=change, role="emergency")
    deployment = services.change_request_deploy(actor=demo.oncall, change=change)
    Deployment.objects.filter(pk=deployment.pk).update(status="succeeded")
    deployment.refresh_from_db()
    services.change_request_deployment_finished(deployment=deployment, status="succeeded")
    return PostImplementationReview.objects.get(change=change)


def cab_on_call(demo):
    """A CAB member who is also on call, and so may request an emergency change."""
    demo.cab.groups.add(Group.objects.get(name="on-call"))
    return demo.cab


def still_open(review, code: str) -> None:
    review.refresh_from_db()
    assert review.closed_at is None and review.closed_by is None and not review.findings
    refused = AuditEvent.objects.get(action="review.close.refused")
    assert refused.after["code"] == code


def test_the_requester_cannot_close_the_review_of_their_own_emergency_change(demo):
    review = emergency_review(demo, cab_on_call(demo))

    with pytest.raises(DomainError) as exc:
        services.review_close(actor=demo.cab, review=review, findings="All fine")

    assert exc.value.code == "self_approval"
    still_open(review, "self_approval")
    assert selectors.open_reviews(demo.cab) == []
    assert selectors.open_reviews(demo.cab2) == [review]
    services.review_close(actor=demo.cab2, review=review, findings="Root cause fixed")
    review.refresh_from_db()
    assert review.closed_by == demo.cab2


def test_the_requester_cannot_close_the_review_in_the_page(demo):
    review = emergency_review(demo, cab_on_call(demo))
    client = page_client(demo.cab)
    page = client.get(f"/changes/{review.change_id}/").content.decode()
    assert "Close the review" not in page
    assert "Post-implementation reviews to close" not in \
        client.get("/approvals/").content.decode()

    response = client.post(f"/changes/{review.change_id}/review/close",
                           {"findings": "Nothing to see"}, follow=True)

    assert "CAB reviews it, not you" in response.content.decode()
    still_open(review, "self_approval")


def test_an_author_of_the_release_cannot_close_the_review(demo):
    review = emergency_review(demo, demo.engineer, release=ReleaseFactory(authors=["cab2"]))
    with pytest.raises(DomainError) as exc:
        services.review_close(actor=demo.cab2, review=review, findings="Fine")
    assert exc.value.code == "author"
    still_open(review, "author")
    assert "Close the review" not in page_client(demo.cab2).get(
        f"/changes/{review.change_id}/").content.decode()


def test_a_delegate_of_the_requester_cannot_close_the_review(demo):
    review = emergency_review(demo, cab_on_call(demo))
    lend(demo.cab, demo.business, role="cab", environment="production")
    with pytest.raises(DomainError) as exc:
        services.review_close(actor=demo.business, review=review, findings="Fine")
    assert exc.value.code == "delegate_conflict"
    still_open(review, "delegate_conflict")


def test_the_admin_offers_no_way_to_close_a_review(demo):
    assert not admin.site.is_registered(PostImplementationReview)
    client = page_client(demo.admin)
    assert client.get("/admin/approvals/postimplementationreview/").status_code == 404
