"""Notifications (SOP 4.1 phase 1, 11.2): who is told what, and sending it exactly once.

Every message the portal sends goes through here, as an outbox. Events reach this
module as domain events sent inside the transaction that decided them
(``receivers.py``): the approval workflow's (``approvals.signals``: submitted, approved,
rejected, deploying, start refused, approval reopened) and the engine's
``deployment_ending``. The messages of one event become ``Notification`` rows in that
transaction, so they exist if and only if the decision committed; their sending is
queued on commit (the Celery task ``notification_send``), and the beat task
``notifications_send_unsent`` sends the rows whose queued send never came. Sending
claims a row with a conditional update before the message leaves, so a row is sent at
most once however many tasks and sweeps reach it. A failing or slow delivery never
undoes or delays the decision.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import EmailValidator, URLValidator
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from audit.trail import System, audit_record
from catalog.models import Application, Environment
from catalog.permissions import environment_permissions
from core import outbound
from core.errors import Invalid, NotFound, Refused
from deployments.models import AnalysisVerdict, Deployment
from notifications.models import Channel, Kind, Notification, Subscription, redact_target

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Transient failures wait 10 s, 20 s, 40 s, 80 s before the next attempt.
RETRY_BASE_SECONDS = 10
# The outbox sweep sends at most this many rows each time it runs.
OUTBOX_BATCH = 200
WEBHOOK_TIMEOUT = 10
WEBHOOK_ANSWER_MAX_BYTES = 64 * 1024

def base_url() -> str:
    return os.environ.get("PORTAL_BASE_URL", "http://localhost:8000").rstrip("/")


@dataclass
class Message:
    kind: str
    subject: str
    body: str
    fields: dict


# --- recipients --------------------------------------------------------------------


def _subscriptions(kind: str, application_id: int, environment_id: int) -> list[Subscription]:
    """Subscriptions that want this kind, whose holder may still see the environment.

    Permissions are checked again at each event, not only when subscribing: someone
    who left the team stops hearing about its changes.
    """
    wanted = [s for s in Subscription.objects.filter(
        Q(application_id=application_id) | Q(application__isnull=True),
        Q(environment_id=environment_id) | Q(environment__isnull=True),
        active=True).select_related("user", "created_by")
        if not s.kinds or kind in s.kinds]
    held: dict[int, set[str]] = {}

    def may(user, needed: set[str] | None) -> bool:
        if user is None or not user.is_active:
            return False
        if user.is_staff or user.is_superuser:
            return True
        if user.pk not in held:
            held[user.pk] = environment_permissions(user).get(environment_id, set())
        return bool(held[user.pk] & needed) if needed else bool(held[user.pk])

    return [s for s in wanted
            if (may(s.user, None) if s.user_id else may(s.created_by, {"deploy", "rollback"}))]


def _subscription_recipient(subscription: Subscription) -> tuple[str, str]:
    if subscription.channel == Channel.EMAIL:
        address = subscription.target or (subscription.user.email if subscription.user else "")
        name = subscription.user.get_username() if subscription.user else address
        return address, name
    return subscription.target, redact_target(subscription.target)


def _queue(*, event_key: str, message: Message, change_id, deployment_id, environment: str,
           people=(), subscriptions=()) -> list[int]:
    """Create the notification rows of one event (once) and queue their sending."""
    rows: dict[tuple[str, str], Notification] = {}
    for user in people:
        if user is None or not user.email:
            continue
        rows.setdefault((Channel.EMAIL, user.email), Notification(
            channel=Channel.EMAIL, recipient=user.email, recipient_name=user.get_username()))
    for subscription in subscriptions:
        recipient, name = _subscription_recipient(subscription)
        if recipient:
            rows.setdefault((subscription.channel, recipient), Notification(
                channel=subscription.channel, recipient=recipient, recipient_name=name,
                subscription=subscription))
    for row in rows.values():
        row.kind = message.kind
        row.event_key = event_key
        row.change_id = change_id
        row.deployment_id = deployment_id
        row.environment = environment
        row.subject = message.subject[:300]
        row.body = message.body
        row.fields = message.fields
    # The unique (event_key, channel, recipient) makes an event handled twice harmless.
    Notification.objects.bulk_create(rows.values(), ignore_conflicts=True)
    ids = list(Notification.objects.filter(event_key=event_key, status=Notification.Status.PENDING,
                                           attempts=0).values_list("pk", flat=True))
    # After commit; should the process die first, or the broker refuse, the rows are
    # in the outbox and the sweep sends them (notifications_send_unsent).
    transaction.on_commit(lambda: _enqueue(ids), robust=True)
    return ids


def _enqueue(ids: list[int]) -> None:
    from notifications.tasks import notification_send

    for pk in ids:
        notification_send.delay(pk)


# --- message content -----------------------------------------------------------------


def _changes_included(release) -> list[str]:
    lines = [line.strip().lstrip("-*• ").strip() for line in (release.notes or "").splitlines()]
    return [line for line in lines if line] or [f"Release {release.version} (no notes given)"]


def _person(user) -> str:
    if user is None:
        return "not named"
    full = user.get_full_name()
    return f"{full} ({user.get_username()})" if full else user.get_username()


def _duration(delta: timedelta | None) -> str:
    if delta is None:
        return "unknown"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def expected_duration(application_id: int, environment_id: int) -> timedelta | None:
    """Median duration of the last five successful deployments there."""
    rows = list(Deployment.objects.filter(
        application_id=application_id, environment_id=environment_id,
        status=Deployment.Status.SUCCEEDED, started_at__isnull=False,
        finished_at__isnull=False).order_by("-finished_at").values_list(
        "started_at", "finished_at")[:5])
    if not rows:
        return None
    return timedelta(seconds=statistics.median((b - a).total_seconds() for a, b in rows))


def _change_fields(change) -> dict:
    release = change.release
    return {
        "change": change.reference,
        "change_type": change.get_change_type_display(),
        "strategy": change.get_strategy_display(),
        "application": release.application.name,
        "version": release.version,
        "environment": change.environment.name,
        "requested_by": _person(change.requested_by),
        "risk": change.get_risk_display() or "not assessed",
        "impact": change.impact.strip() or "No user-visible impact expected",
        "rollback_plan": change.rollback_plan.strip() or "none given",
        "changes": _changes_included(release),
        "url": f"{base_url()}/changes/{change.pk}/",
    }


def pre_deployment_message(change, *, at: datetime) -> Message:
    """SOP 11.2 pre-deployment notification."""
    expected = expected_duration(change.release.application_id, change.environment_id)
    start = timezone.localtime(at)
    end = start + (expected or timedelta(minutes=30))
    fields = {
        **_change_fields(change),
        "date": f"{start:%Y-%m-%d}",
        "start_time": f"{start:%H:%M}",
        "end_time": f"{end:%H:%M}",
        "duration": (f"about {_duration(expected)} (median of recent deployments)"
                     if expected else "about 30 min (no earlier deployment to go by)"),
        "on_call": _person(change.on_call),
        "rollback_contact": _person(change.on_call or change.requested_by),
    }
    subject = (f"[DEPLOYMENT] {change.environment.name} Deployment Scheduled - "
               f"{start:%Y-%m-%d %H:%M} UTC")
    body = render_to_string("notifications/messages/pre_deployment.txt", {"f": fields})
    return Message(Kind.PRE_DEPLOYMENT, subject, body, fields)


def approval_request_message(change, *, recipient, gates: list[str]) -> Message:
    fields = {**_change_fields(change), "gates": gates, "recipient": recipient.get_username()}
    subject = (f"[APPROVAL NEEDED] {change.reference} {change.release.application.name} "
               f"{change.release.version} to {change.environment.name}")
    body = render_to_string("notifications/messages/approval_request.txt", {"f": fields})
    return Message(Kind.APPROVAL_REQUEST, subject, body, fields)


def rejected_message(change, *, gate: str, rejected_by: str, comment: str) -> Message:
    fields = {**_change_fields(change), "gate": gate, "rejected_by": rejected_by,
              "comment": comment}
    subject = (f"[REJECTED] {change.reference} {change.release.application.name} "
               f"{change.release.version} to {change.environment.name}")
    body = render_to_string("notifications/messages/rejected.txt", {"f": fields})
    return Message(Kind.REJECTED, subject, body, fields)


def start_refused_message(change, *, deployer: str, trigger: str) -> Message:
    fields = {**_change_fields(change), "deployer": deployer, "trigger": trigger}
    subject = (f"[NOT DEPLOYED] {change.reference} {change.release.application.name} "
               f"{change.release.version} to {change.environment.name}: {deployer} may no "
               "longer deploy there")
    body = render_to_string("notifications/messages/start_refused.txt", {"f": fields})
    return Message(Kind.START_REFUSED, subject, body, fields)


def approval_reopened_message(change, *, role: str, approver, changed: list[str]) -> Message:
    gate = role.replace("_", " ")
    fields = {**_change_fields(change), "gate": gate, "approver": approver.get_username(),
              "changed": list(changed)}
    subject = f"{change.reference}: your {gate} approval was reopened"
    body = render_to_string("notifications/messages/approval_reopened.txt", {"f": fields})
    return Message(Kind.APPROVAL_REOPENED, subject, body, fields)


def _key_metrics(deployment: Deployment) -> dict:
    """The health figures measured last (SOP 11.2 key metrics)."""
    verdict = (AnalysisVerdict.objects.filter(deployment=deployment)
               .order_by("-created_at", "-id").first())
    figures = {}
    if verdict is not None:
        figures = verdict.figures.get("canary") or verdict.figures.get("baseline") or {}
    if not figures.get("requests"):
        return {"error_rate": "not measured", "response_time": "not measured",
                "uptime": "not measured"}
    targets = len(figures.get("targets") or []) or 1
    failing = len(figures.get("health_failures") or [])
    p50 = figures.get("p50_ms")
    return {"error_rate": f"{figures.get('error_rate', 0):.2f}%",
            "response_time": f"{p50:.0f} ms (median)" if p50 is not None else "not measured",
            "uptime": f"{100.0 * (targets - min(failing, targets)) / targets:.0f}% "
                      f"({targets - min(failing, targets)} of {targets} targets healthy)"}


def deployment_message(deployment: Deployment, status: str, change=None) -> Message:
    """SOP 11.2 post-deployment summary, and the failure and rollback notices in its form."""
    env = deployment.environment
    app = deployment.application
    version = deployment.release.version
    is_rollback = deployment.kind == Deployment.Kind.ROLLBACK
    if status == Deployment.Status.SUCCEEDED and not is_rollback:
        kind, tag, words, state = (Kind.POST_DEPLOYMENT, "DEPLOYMENT COMPLETE",
                                   "has been completed successfully", "Success")
    elif status == Deployment.Status.SUCCEEDED:
        kind, tag, words, state = (Kind.ROLLED_BACK, "ROLLBACK COMPLETE",
                                   "rolled the environment back and completed successfully",
                                   "Success (rollback)")
    elif status == Deployment.Status.ROLLED_BACK:
        kind, tag, words, state = (Kind.ROLLED_BACK, "DEPLOYMENT ROLLED BACK",
                                   "was rolled back", "Rolled back")
    else:
        kind, tag, words, state = (Kind.FAILED, "DEPLOYMENT FAILED", "has failed", "Failed")
    what = "rollback" if is_rollback else "deployment"
    finished = timezone.localtime(deployment.finished_at or timezone.now())
    started = timezone.localtime(deployment.started_at) if deployment.started_at else None
    issues = []
    if deployment.failure_reason:
        issues.append(deployment.failure_reason)
    for step in deployment.steps.filter(status="failed"):
        issues.append(f"Step {step.title!r} failed: {step.detail or 'no detail'}")
    for verdict in AnalysisVerdict.objects.filter(deployment=deployment, outcome="failed"):
        issues.extend(verdict.reasons or [])
    next_actions = {
        Kind.POST_DEPLOYMENT: ["Watch error rate and response times for 24 hours (SOP 4.1 "
                               "phase 3)", "Hold the post-deployment review"],
        Kind.FAILED: ["On-call engineer decides: fix forward under a hotfix or roll back "
                      "(SOP 8.1)", "Record the cause in the change"],
        Kind.ROLLED_BACK: ["Complete the rollback verification checklist (SOP 8.3)",
                           "Find the cause before the release is requested again"],
    }[kind]
    fields = {
        "application": app.name, "version": version, "environment": env.name,
        "deployment": deployment.pk, "kind": deployment.kind,
        "opening": f"The {env.name.lower()} {what} of {app.name} version {version} {words}.",
        "start_time": f"{started:%Y-%m-%d %H:%M:%S} UTC" if started else "did not start",
        "end_time": f"{finished:%Y-%m-%d %H:%M:%S} UTC",
        "duration": _duration(deployment.finished_at - deployment.started_at
                              if deployment.started_at and deployment.finished_at else None),
        "status": state,
        "metrics_when": "measured at the end of the deployment; the 24-hour figures follow "
                        "in the monitoring dashboards",
        **_key_metrics(deployment),
        "issues": list(dict.fromkeys(issues)),
        "next_actions": next_actions,
        "url": f"{base_url()}/deployments/{deployment.pk}/",
        "change": change.reference if change is not None else "",
        "on_call": _person(change.on_call) if change is not None else "not named",
    }
    subject = f"[{tag}] {env.name} {what.capitalize()} Summary - {finished:%Y-%m-%d}"
    body = render_to_string("notifications/messages/post_deployment.txt", {"f": fields})
    return Message(kind, subject, body, fields)


# --- events --------------------------------------------------------------------------


def _change(change_id):
    from approvals.models import ChangeRequest

    return (ChangeRequest.objects.with_related().select_related("release__application")
            .prefetch_related("gates__approvals").filter(pk=change_id).first())


def notifications_for_change_submitted(*, change_id: int, status: str, at=None,
                                       **kwargs) -> list[int]:
    """After a submission: approval requests to who may decide, and the pre-deployment
    notice when the change is already scheduled."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        ids = _approval_requests(change)
        if status == "scheduled":
            ids += _pre_deployment(change, at=change.scheduled_for)
        return ids


def notifications_for_gate_approved(*, change_id: int, change_status: str, at=None,
                                    **kwargs) -> list[int]:
    """An approval that made the change scheduled announces the deployment."""
    if change_status != "scheduled":
        return []
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        return _pre_deployment(change, at=change.scheduled_for or timezone.now())


def notifications_for_gate_rejected(*, change_id: int, role: str, rejected_by: str,
                                    comment: str, **kwargs) -> list[int]:
    """The requester (and subscribers) learn who rejected the change, and why."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        message = rejected_message(change, gate=role.replace("_", " "),
                                   rejected_by=rejected_by, comment=comment)
        return _queue(event_key=f"change:{change.pk}:rejected", message=message,
                      change_id=change.pk, deployment_id=None,
                      environment=change.environment.slug, people=[change.requested_by],
                      subscriptions=_subscriptions(Kind.REJECTED,
                                                   change.release.application_id,
                                                   change.environment_id))


def notifications_for_change_start_refused(*, change_id: int, deployer: str, trigger: str,
                                           at, **kwargs) -> list[int]:
    """The deployer (and the requester) learn that nothing started, and why."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        message = start_refused_message(change, deployer=deployer, trigger=trigger)
        return _queue(event_key=f"change:{change.pk}:start_refused:{at:%Y%m%d%H%M%S}",
                      message=message, change_id=change.pk, deployment_id=None,
                      environment=change.environment.slug,
                      people=[change.deployer or change.requested_by, change.requested_by])


def notifications_for_approval_reopened(*, change_id: int, approval_id: int, role: str,
                                        approver_id: int, changed: list[str], **kwargs
                                        ) -> list[int]:
    """The approver learns that their approval no longer counts, and what moved."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        change = _change(change_id)
        approver = get_user_model().objects.filter(pk=approver_id).first()
        if change is None or approver is None:
            return []
        message = approval_reopened_message(change, role=role, approver=approver,
                                            changed=changed)
        return _queue(event_key=f"change:{change.pk}:reopened:{approval_id}",
                      message=message, change_id=change.pk, deployment_id=None,
                      environment=change.environment.slug, people=[approver],
                      subscriptions=_subscriptions(Kind.APPROVAL_REOPENED,
                                                   change.release.application_id,
                                                   change.environment_id))


def notifications_for_change_deploying(*, change_id: int, deployment_id: int, at,
                                       **kwargs) -> list[int]:
    """The deployment starts now: the pre-deployment notice (SOP 11.2)."""
    with transaction.atomic():
        change = _change(change_id)
        if change is None:
            return []
        return _pre_deployment(change, at=at, deployment_id=deployment_id)


def _pre_deployment(change, *, at, deployment_id=None) -> list[int]:
    message = pre_deployment_message(change, at=at or timezone.now())
    key = (f"change:{change.pk}:pre:{deployment_id}" if deployment_id
           else f"change:{change.pk}:pre:{(at or timezone.now()):%Y%m%d%H%M}")
    return _queue(event_key=key, message=message, change_id=change.pk,
                  deployment_id=deployment_id, environment=change.environment.slug,
                  people=[change.requested_by, change.on_call],
                  subscriptions=_subscriptions(Kind.PRE_DEPLOYMENT,
                                               change.release.application_id,
                                               change.environment_id))


def _approval_requests(change) -> list[int]:
    """One message per person who may decide a pending gate (SOP 3.3), naming the gates:
    who may is ``approvals.eligibility``'s answer, as in the inbox."""
    from django.contrib.auth import get_user_model

    from approvals.selectors import gate_deciders

    deciders = gate_deciders([change])
    gates_by_user: dict[int, list[str]] = {}
    for gate in change.gates.all():
        for person in deciders.get(gate.pk, ()):
            gates_by_user.setdefault(person.id, []).append(gate.get_role_display())
    users = get_user_model().objects.filter(pk__in=gates_by_user, is_active=True)
    ids = []
    for user in users:
        if not user.email:
            continue
        message = approval_request_message(change, recipient=user, gates=gates_by_user[user.pk])
        ids += _queue(event_key=f"change:{change.pk}:approval:{user.pk}", message=message,
                      change_id=change.pk, deployment_id=None,
                      environment=change.environment.slug, people=[user])
    if gates_by_user:
        message = approval_request_message(change, recipient=change.requested_by,
                                           gates=sorted({g for gs in gates_by_user.values()
                                                         for g in gs}))
        message.body = message.body.replace(f"Hello {change.requested_by.get_username()},",
                                            "Hello,", 1)
        ids += _queue(event_key=f"change:{change.pk}:approval", message=message,
                      change_id=change.pk, deployment_id=None,
                      environment=change.environment.slug,
                      subscriptions=_subscriptions(Kind.APPROVAL_REQUEST,
                                                   change.release.application_id,
                                                   change.environment_id))
    return ids


def notifications_for_deployment(*, deployment: Deployment, status: str) -> list[int]:
    """After a deployment ends: the post-deployment summary, or the failure or rollback."""
    if status == Deployment.Status.CANCELLED:
        return []
    with transaction.atomic():
        deployment = (Deployment.objects.select_related("application", "environment",
                                                        "release").get(pk=deployment.pk))
        change = _change(deployment.change_id) if deployment.change_id else None
        message = deployment_message(deployment, status, change)
        people = [change.requested_by, change.on_call] if change is not None else []
        if deployment.started_by is not None:
            people.append(deployment.started_by)
        return _queue(event_key=f"deployment:{deployment.pk}:{status}", message=message,
                      change_id=deployment.change_id, deployment_id=deployment.pk,
                      environment=deployment.environment.slug, people=people,
                      subscriptions=_subscriptions(message.kind, deployment.application_id,
                                                   deployment.environment_id))


# --- sending -------------------------------------------------------------------------


class TransientError(Exception):
    """The receiver could not be reached or answered 5xx: worth trying again."""


def _slack_body(notification: Notification) -> dict:
    return {
        "text": notification.subject,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": notification.subject[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": notification.body[:2900]}},
        ],
    }


def _json_body(notification: Notification) -> dict:
    return {"kind": notification.kind, "subject": notification.subject,
            "text": notification.body, "change": notification.change_id,
            "deployment": notification.deployment_id,
            "environment": notification.environment, "fields": notification.fields,
            "notification": notification.pk}


def _post(url: str, body: dict, notification: Notification) -> None:
    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json", "User-Agent": "change-portal",
        # Receivers can drop a repeat of the same message by this key.
        "Idempotency-Key": f"notification-{notification.pk}"}
    try:
        answer = outbound.request("POST", url, body=data, headers=headers,
                                  connect_timeout=WEBHOOK_TIMEOUT, read_timeout=WEBHOOK_TIMEOUT,
                                  max_bytes=WEBHOOK_ANSWER_MAX_BYTES)
    except outbound.DestinationRefused as exc:
        raise ValueError(f"destination refused: {exc}") from None
    except outbound.ResponseTooLarge as exc:
        raise ValueError(str(exc)) from None
    except outbound.Unreachable as exc:
        raise TransientError(str(exc)) from None
    if answer.status >= 500 or answer.status == 429:
        raise TransientError(f"HTTP {answer.status}")
    if answer.status >= 400:
        raise ValueError(f"HTTP {answer.status}: the receiver refused the message")


def _deliver(notification: Notification) -> None:
    if notification.channel == Channel.EMAIL:
        send_mail(notification.subject, notification.body, None, [notification.recipient])
    elif notification.channel == Channel.SLACK:
        _post(notification.recipient, _slack_body(notification), notification)
    else:
        _post(notification.recipient, _json_body(notification), notification)


def notification_send(*, notification_id: int) -> str:
    """Send one notification once. Returns "sent", "retry", "failed" or "skipped".

    The claim (pending -> sending) is committed before the message leaves: a second
    delivery of the same task finds the row claimed or sent and does nothing. A
    transient failure puts the row back to pending for the next try.
    """
    now = timezone.now()
    # A conditional update settles two deliveries racing for the same row.
    claimed = Notification.objects.filter(
        pk=notification_id, status=Notification.Status.PENDING,
        attempts__lt=MAX_ATTEMPTS).update(status=Notification.Status.SENDING,
                                          attempts=F("attempts") + 1, claimed_at=now)
    if claimed != 1:
        return "skipped"
    notification = Notification.objects.get(pk=notification_id)
    try:
        _deliver(notification)
    except TransientError as exc:
        final = notification.attempts >= MAX_ATTEMPTS
        with transaction.atomic():
            Notification.objects.filter(pk=notification_id).update(
                status=Notification.Status.FAILED if final else Notification.Status.PENDING,
                last_error=str(exc)[:1000],
                next_attempt_at=timezone.now() + retry_delay(notification.attempts))
            if final:
                _audit_outcome(notification, "notification.failed", str(exc))
        logger.warning("notification %s to %s not delivered (attempt %s): %s",
                       notification.pk, notification.channel, notification.attempts, exc)
        return "failed" if final else "retry"
    except Exception as exc:  # a refusal or a bad address: trying again will not help
        with transaction.atomic():
            Notification.objects.filter(pk=notification_id).update(
                status=Notification.Status.FAILED, last_error=str(exc)[:1000])
            _audit_outcome(notification, "notification.failed", str(exc))
        logger.warning("notification %s failed: %s", notification.pk, exc)
        return "failed"
    with transaction.atomic():
        Notification.objects.filter(pk=notification_id).update(
            status=Notification.Status.SENT, sent_at=timezone.now(), last_error="")
        _audit_outcome(notification, "notification.sent", "")
    return "sent"


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed try a message is tried again:
    10 s, 20 s, 40 s, 80 s."""
    return timedelta(seconds=RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))


def notifications_send_unsent(*, now: datetime | None = None,
                              grace: timedelta | None = None,
                              batch: int = OUTBOX_BATCH) -> list[int]:
    """Beat: send outbox rows that are due but whose queued send never came.

    A row is written with its decision and its send queued on commit; a process that
    died in between, a broker that was down or a retry that was lost leaves it pending.
    Rows due for longer than ``grace`` (the queued task's head start) are sent here,
    oldest first. Each send claims its row first (``notification_send``), so a task
    arriving late, or a second sweep, finds it claimed and sends nothing. Returns the
    ids of the rows this sweep sent.
    """
    now = now or timezone.now()
    if grace is None:
        # The queued task's (or its retry's) head start before the sweep steps in.
        grace = timedelta(seconds=settings.PORTAL_OUTBOX_GRACE_SECONDS)
    due = list(Notification.objects.filter(
        status=Notification.Status.PENDING, attempts__lt=MAX_ATTEMPTS,
        next_attempt_at__lte=now - grace).order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:batch])
    sent = []
    for pk in due:
        try:
            outcome = notification_send(notification_id=pk)
        except Exception:
            logger.exception("the outbox sweep could not send notification %s", pk)
            continue
        if outcome == "sent":
            sent.append(pk)
    if due:
        logger.info("outbox sweep: %s due, %s sent", len(due), len(sent))
    return sent


def _audit_outcome(notification: Notification, action: str, error: str) -> None:
    audit_record(actor=System("notification sender"), action=action, obj=notification,
                 object_repr=f"{notification.get_kind_display()}: {notification.subject}"[:300],
                 environment=notification.environment,
                 after={"kind": notification.kind, "channel": notification.channel,
                        "recipient": redact_target(notification.recipient),
                        "change": notification.change_id,
                        "deployment": notification.deployment_id,
                        "attempts": notification.attempts},
                 reason=error)


# --- subscriptions -------------------------------------------------------------------


def _validate_target(channel: str, target: str, user) -> None:
    if channel == Channel.EMAIL:
        if not target and not (user is not None and user.email):
            raise Invalid("an email subscription needs an address",
                          fields={"target": ["Give an email address."]})
        if target:
            try:
                EmailValidator()(target)
            except ValidationError:
                raise Invalid("not an email address",
                              fields={"target": ["Give a valid email address."]}) from None
    else:
        try:
            URLValidator(schemes=["http", "https"])(target)
        except ValidationError:
            raise Invalid("a webhook needs an http(s) URL",
                          fields={"target": ["Give the webhook's http or https URL."]}) from None
        # Refused when saved, not only when sent (where the resolved address is checked).
        try:
            outbound.check_url(target, resolve=False)
        except outbound.DestinationRefused as exc:
            raise Invalid("the webhook's address may not be called", code="destination_refused",
                          fields={"target": [f"The portal does not call this address: {exc}"]}
                          ) from None


def subscription_create(*, actor, channel: str, target: str = "",
                        application: Application | None = None,
                        environment: Environment | None = None, kinds: list[str] | None = None,
                        user=None) -> Subscription:
    if channel not in Channel.values:
        raise Invalid("unknown channel", fields={"channel": [
            f"Choose one of {', '.join(Channel.values)}."]})
    kinds = list(kinds or [])
    unknown = sorted(set(kinds) - set(Kind.values))
    if unknown:
        raise Invalid(f"unknown kinds: {', '.join(unknown)}",
                      fields={"kinds": [f"Choose among {', '.join(Kind.values)}."]})
    target = (target or "").strip()
    _validate_target(channel, target, user)
    _authorise_subscription(actor, environment, personal=(
        channel == Channel.EMAIL and not target and user is not None and user.pk == actor.pk))
    with transaction.atomic():
        subscription = Subscription.objects.create(
            channel=channel, target=target, application=application, environment=environment,
            kinds=kinds, user=user, created_by=actor)
        audit_record(actor=actor, action="subscription.created", obj=subscription,
                     environment=environment.slug if environment else "",
                     after={"channel": channel, "target": redact_target(target),
                            "application": application.slug if application else None,
                            "environment": environment.slug if environment else None,
                            "kinds": kinds})
    return subscription


def _authorise_subscription(actor, environment, *, personal: bool) -> None:
    """Who may subscribe, so that nobody hears about changes they may not see.

    A person subscribes themselves to an environment they hold a permission on; a
    team channel (a webhook, a list's address) needs `deploy` or `rollback` there.
    Subscriptions to every environment, and on anyone else's behalf, are for
    administrators.
    """
    if actor.is_staff or actor.is_superuser:
        return
    if environment is None:
        raise Refused("choose an environment: subscriptions to all of them are for "
                      "administrators", code="not_permitted")
    held = environment_permissions(actor).get(environment.pk, set())
    if personal and held:
        return
    if not personal and held & {"deploy", "rollback"}:
        return
    raise Refused(f"you may not subscribe {'yourself' if personal else 'a team channel'} to "
                  f"{environment.name}", code="not_permitted")


def subscription_delete(*, actor, subscription_id: int) -> None:
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().filter(
            pk=subscription_id).first()
        if subscription is None:
            raise NotFound("no such subscription")
        if subscription.created_by_id != actor.pk and not actor.is_staff:
            raise Refused("only who made a subscription, or an administrator, removes it")
        audit_record(actor=actor, action="subscription.deleted", obj=subscription,
                     before={"channel": subscription.channel,
                             "target": redact_target(subscription.target)})
        subscription.delete()



# A send claimed longer ago than this was cut off by a dying worker.
INTERRUPTED_AFTER = timedelta(minutes=15)


def notifications_settle_interrupted(*, now: datetime | None = None) -> int:
    """Mark sends cut off mid-way as failed, saying why; they are not tried again.

    The message may or may not have left before the worker died. Sending it again
    could send it twice, so it is shown as failed with the reason instead of being
    left "sending" for ever.
    """
    cutoff = (now or timezone.now()) - INTERRUPTED_AFTER
    settled = 0
    for pk in list(Notification.objects.filter(status=Notification.Status.SENDING,
                                               claimed_at__lt=cutoff)
                   .values_list("pk", flat=True)):
        with transaction.atomic():
            changed = Notification.objects.filter(
                pk=pk, status=Notification.Status.SENDING, claimed_at__lt=cutoff,
            ).update(status=Notification.Status.FAILED,
                     last_error="interrupted while sending; not retried, so that it is "
                                "never sent twice")
            if changed:
                notification = Notification.objects.get(pk=pk)
                audit_record(actor=System("interrupted notification detector"),
                             action="notification.interrupted", obj=notification,
                             environment=notification.environment,
                             after={"status": notification.status})
                settled += 1
    return settled
