"""Notifications: who hears what (SOP 3.3, 4.1, 11.2), content against the SOP 11.2
templates, kept for the change page, sent once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from approvals import services as approvals
from audit.models import AuditEvent
from core import dispatch
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep
from notifications import services
from notifications.models import Kind, Notification, Subscription
from notifications.tasks import notification_send
from tests.factories import ReleaseFactory, request_change

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sent_here_only(settings):
    """These tests send in this process (``deliver_all``, ``notification_send.run``) and
    look at what was sent; the rows they commit must not also be queued to the session's
    real worker, which would race them for the same rows (and send where the test's
    mail outbox cannot see): the sends queued on commit are held. The worker's own
    sending is tested in test_webhooks.py and test_outbox.py."""
    settings.PORTAL_TASK_DISPATCH = "hold"
    dispatch.clear_held()
    yield
    dispatch.clear_held()

NOTES = "- New checkout page\n- Fix: rounding of totals\n* Faster search"


def production_change(demo, **kwargs):
    kwargs.setdefault("rollback_plan", "Redeploy the previous release")
    kwargs.setdefault("on_call", demo.oncall)
    kwargs.setdefault("impact", "Checkout unavailable for about a minute")
    return request_change(demo.engineer, "production",
                          release=ReleaseFactory(notes=NOTES), **kwargs)


def of_kind(kind, **filters):
    return list(Notification.objects.filter(kind=kind, **filters).order_by("recipient"))


def deliver_all():
    for pk in Notification.objects.filter(status="pending").values_list("pk", flat=True):
        services.notification_send(notification_id=pk)


def test_submission_asks_each_person_who_may_decide_a_gate(demo):
    change = production_change(demo)
    requests = of_kind(Kind.APPROVAL_REQUEST, change_id=change.pk)
    by_person = {n.recipient_name: n for n in requests}
    # Production standard: CAB (cab, cab2), security, business; never the requester.
    assert {"cab", "cab2", "security", "business"} <= set(by_person)
    assert "engineer" not in by_person
    cab = by_person["cab"]
    assert cab.subject.startswith(f"[APPROVAL NEEDED] {change.reference}")
    assert "Change approval board" in cab.fields["gates"]
    assert f"/changes/{change.pk}/" in cab.body
    assert "Redeploy the previous release" in cab.body
    assert "New checkout page" in cab.body


def test_approval_requests_greet_each_decider_and_the_channels_greet_nobody_by_name(demo):
    services.subscription_create(actor=demo.admin, channel="email", target="team@example.com",
                                 kinds=[Kind.APPROVAL_REQUEST])
    change = production_change(demo)
    by_name = {n.recipient_name: n for n in of_kind(Kind.APPROVAL_REQUEST, change_id=change.pk)}
    assert by_name["cab"].body.startswith("Hello cab,\n")
    team = by_name["team@example.com"]
    assert team.body.startswith("Hello,\n")
    assert team.fields["recipient"] == demo.engineer.get_username()
    # Every row's send was queued on commit (held here, sent by the test itself).
    queued = {h.args[0] for h in dispatch.held(notification_send.name)}
    assert {n.pk for n in by_name.values()} <= queued


def test_rejection_tells_the_requester_why(demo):
    change = production_change(demo)
    approvals.gate_reject(actor=demo.security, change=change, role="security",
                          comment="Secrets scan found a token in the image")
    [notice] = of_kind(Kind.REJECTED, change_id=change.pk)
    assert notice.recipient == demo.engineer.email
    assert notice.subject.startswith(f"[REJECTED] {change.reference}")
    assert "Secrets scan found a token in the image" in notice.body
    assert "security" in notice.body.lower() and "security" in notice.fields["rejected_by"]


SOP_PRE_FIELDS = ["Team,", "We have scheduled a production deployment for",
                  "Deployment Details:", "- Date:", "- Time:", "- Duration:", "- Impact:",
                  "Changes Included:", "On-call Engineer:", "Rollback Contact:",
                  "Please reach out with any questions or concerns.", "Thanks,",
                  "DevOps Team"]


def test_pre_deployment_notification_follows_the_sop_template(demo):
    # Only someone who may deploy to production may schedule there, so this change is
    # not scheduled; the message is about the start the event reports.
    change = production_change(demo)
    start = timezone.now()
    services.notifications_for_change_deploying(change_id=change.pk, deployment_id=999,
                                                at=start)
    [to_requester] = of_kind(Kind.PRE_DEPLOYMENT, change_id=change.pk,
                             recipient=demo.engineer.email, deployment_id=999)
    body = to_requester.body
    positions = [body.index(field) for field in SOP_PRE_FIELDS]
    assert positions == sorted(positions), "fields in the SOP 11.2 order"
    assert to_requester.subject == (
        f"[DEPLOYMENT] Production Deployment Scheduled - {start:%Y-%m-%d %H:%M} UTC")
    assert "Storefront" in body and change.release.version in body
    for line in ("- New checkout page", "- Fix: rounding of totals", "- Faster search"):
        assert line in body
    assert "On-call Engineer: oncall" in body
    assert "- Impact: Checkout unavailable for about a minute" in body
    # The on-call engineer is told too.
    assert of_kind(Kind.PRE_DEPLOYMENT, change_id=change.pk, recipient=demo.oncall.email)


SOP_POST_FIELDS = ["Team,", "has been completed successfully.", "Deployment Summary:",
                   "- Start Time:", "- End Time:", "- Total Duration:", "- Status: Success",
                   "Key Metrics", "- Error Rate:", "- Average Response Time:", "- Uptime:",
                   "Issues Encountered:", "Next Actions:", "Thanks,", "DevOps Team"]


def finished_deployment(change, status, *, kind="deploy", minutes=7, failed_step=""):
    now = timezone.now()
    deployment = Deployment.objects.create(
        application=change.release.application, environment=change.environment,
        release=change.release, change_id=change.pk, status=status, kind=kind,
        started_at=now - timedelta(minutes=minutes), finished_at=now,
        failure_reason="health check failed on web-2" if failed_step else "")
    DeploymentStep.objects.create(deployment=deployment, position=1, name="deploy",
                                  title="Deploy new version",
                                  status="failed" if failed_step else "succeeded",
                                  detail=failed_step)
    return deployment


def test_post_deployment_summary_follows_the_sop_template(demo):
    change = production_change(demo)
    deployment = finished_deployment(change, "succeeded")
    AnalysisVerdict.objects.create(deployment=deployment, outcome="passed", figures={
        "canary": {"targets": ["web-1", "web-2"], "requests": 200, "errors": 1,
                   "error_rate": 0.5, "p50_ms": 41.0, "health_failures": []}})
    Subscription.objects.create(channel="email", target="team@example.com",
                                created_by=demo.admin, kinds=["post_deployment"])
    services.notifications_for_deployment(deployment=deployment, status="succeeded")
    [summary] = of_kind(Kind.POST_DEPLOYMENT, recipient="team@example.com")
    positions = [summary.body.index(field) for field in SOP_POST_FIELDS]
    assert positions == sorted(positions)
    assert summary.subject == (f"[DEPLOYMENT COMPLETE] Production Deployment Summary - "
                               f"{timezone.now():%Y-%m-%d}")
    assert "- Total Duration: 7 min" in summary.body
    assert "- Error Rate: 0.50%" in summary.body
    assert "- Average Response Time: 41 ms" in summary.body
    assert "- Uptime: 100%" in summary.body
    assert "- None" in summary.body  # no issues
    assert summary.change_id == change.pk and summary.deployment_id == deployment.pk


def test_failure_and_rollback_notices_name_the_issue(demo):
    change = production_change(demo)
    failed = finished_deployment(change, "failed", failed_step="HTTP 500 from /health")
    services.notifications_for_deployment(deployment=failed, status="failed")
    [notice] = of_kind(Kind.FAILED, recipient=demo.oncall.email)
    assert notice.subject.startswith("[DEPLOYMENT FAILED] Production Deployment Summary")
    assert "- Status: Failed" in notice.body
    assert "HTTP 500 from /health" in notice.body
    assert "health check failed on web-2" in notice.body

    rolled = finished_deployment(change, "rolled_back", failed_step="error rate 7%")
    services.notifications_for_deployment(deployment=rolled, status="rolled_back")
    rollback = finished_deployment(change, "succeeded", kind="rollback")
    services.notifications_for_deployment(deployment=rollback, status="succeeded")
    subjects = [n.subject for n in of_kind(Kind.ROLLED_BACK, recipient=demo.engineer.email)]
    assert any(s.startswith("[DEPLOYMENT ROLLED BACK]") for s in subjects)
    assert any(s.startswith("[ROLLBACK COMPLETE] Production Rollback Summary") for s in subjects)
    assert "rollback verification checklist" in of_kind(
        Kind.ROLLED_BACK, recipient=demo.engineer.email)[0].body


def test_the_same_event_twice_makes_one_message_per_recipient(demo):
    change = production_change(demo)
    deployment = finished_deployment(change, "succeeded")
    services.notifications_for_deployment(deployment=deployment, status="succeeded")
    count = Notification.objects.filter(deployment_id=deployment.pk).count()
    services.notifications_for_deployment(deployment=deployment, status="succeeded")
    assert Notification.objects.filter(deployment_id=deployment.pk).count() == count


def test_a_task_delivered_twice_sends_the_email_once(demo):
    change = production_change(demo)
    notice = of_kind(Kind.APPROVAL_REQUEST, change_id=change.pk)[0]
    mail.outbox.clear()
    notification_send.run(notice.pk)
    notification_send.run(notice.pk)  # the broker redelivers the same message
    sent = [m for m in mail.outbox if m.to == [notice.recipient]]
    assert len(sent) == 1 and sent[0].subject == notice.subject
    notice.refresh_from_db()
    assert notice.status == "sent" and notice.attempts == 1 and notice.sent_at
    events = AuditEvent.objects.filter(action="notification.sent", object_id=str(notice.pk))
    assert events.count() == 1


def test_a_row_claimed_by_another_delivery_is_not_sent_again(demo):
    change = production_change(demo)
    notice = of_kind(Kind.APPROVAL_REQUEST, change_id=change.pk)[0]
    Notification.objects.filter(pk=notice.pk).update(status="sending", attempts=1)
    mail.outbox.clear()
    assert services.notification_send(notification_id=notice.pk) == "skipped"
    assert mail.outbox == []


def test_a_send_cut_off_by_a_dying_worker_is_settled_as_failed_never_resent(demo, monkeypatch):
    # The rows below are put into the state a dying worker leaves; nothing is queued to
    # the session's real worker (_sent_here_only), which could deliver them meanwhile.
    change = production_change(demo)
    stuck, fresh = of_kind(Kind.APPROVAL_REQUEST, change_id=change.pk)[:2]
    Notification.objects.filter(pk=stuck.pk).update(
        status="sending", attempts=1, claimed_at=timezone.now() - timedelta(minutes=20))
    Notification.objects.filter(pk=fresh.pk).update(
        status="sending", attempts=1, claimed_at=timezone.now() - timedelta(minutes=1))
    mail.outbox.clear()
    assert services.notifications_settle_interrupted() == 1
    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == "failed" and "never sent twice" in stuck.last_error
    assert fresh.status == "sending"
    assert services.notification_send(notification_id=stuck.pk) == "skipped"
    assert mail.outbox == []
    assert AuditEvent.objects.filter(action="notification.interrupted",
                                     object_id=str(stuck.pk)).exists()


def test_notifications_are_listed_on_the_change_page_fragment(demo, client):
    from django.template import Context, Template

    change = production_change(demo)
    deliver_all()
    html = Template("{% load notifications %}{% change_notifications change %}").render(
        Context({"change": change}))
    assert 'id="notifications"' in html
    assert html.count('data-kind="approval_request"') >= 4
    assert "[APPROVAL NEEDED]" in html and "Sent" in html
