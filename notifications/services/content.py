"""What the messages say: the SOP 11.2 notices and the approval workflow's messages,
composed from the change or the deployment they are about."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.template.loader import render_to_string
from django.utils import timezone

from core import clock
from deployments.models import AnalysisVerdict, Deployment
from notifications.models import Kind


def base_url() -> str:
    return os.environ.get("PORTAL_BASE_URL", "http://localhost:8000").rstrip("/")


@dataclass
class Message:
    kind: str
    subject: str
    body: str
    fields: dict


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
    """The request to decide ``gates``, greeting ``recipient`` by name; ``recipient``
    None is the copy for the subscribed channels, which greets nobody by name (its
    fields name the requester as the recipient, as webhook receivers have read them)."""
    named = recipient if recipient is not None else change.requested_by
    fields = {**_change_fields(change), "gates": gates, "recipient": named.get_username()}
    subject = (f"[APPROVAL NEEDED] {change.reference} {change.release.application.name} "
               f"{change.release.version} to {change.environment.name}")
    greeting = f"Hello {recipient.get_username()}," if recipient is not None else "Hello,"
    body = render_to_string("notifications/messages/approval_request.txt",
                            {"f": fields, "greeting": greeting})
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


def deadline_message(change, *, event: str, due: datetime, roles: list[str]) -> Message:
    """A deadline of a change (docs/cab.md): ``event`` is ``approve_by`` or
    ``start_by`` (a warning before it), ``expired`` or ``lapsed`` (it passed)."""
    when = f"{due:%Y-%m-%d %H:%M} UTC"
    gates = ", ".join(role.replace("_", " ") for role in roles)
    what, nxt, tag = {
        "approve_by": (f"the {gates} approval is due by {when}.",
                       "Decide it before then; after that the change goes back to its "
                       "requester to resubmit.", "APPROVE BY"),
        "start_by": (f"the deployment must start by {when}.",
                     "Start it before then; after that its approvals lapse and it needs "
                     "them again.", "START BY"),
        "expired": (f"the {gates} gate was not decided by {when} and expired.",
                    "The change is back in draft: check it is still right and submit it "
                    "again.", "EXPIRED"),
        "lapsed": (f"the deployment did not start by {when}; its approvals lapsed.",
                   "The change waits for approval again: each gate has to be approved "
                   "anew before it deploys.", "APPROVALS LAPSED"),
    }[event]
    fields = {**_change_fields(change), "deadline": event, "due": due.isoformat(),
              "gates": list(roles), "what": what, "next": nxt}
    subject = (f"[{tag}] {change.reference} {change.release.application.name} "
               f"{change.release.version} to {change.environment.name}: {when}")
    body = render_to_string("notifications/messages/deadline.txt", {"f": fields})
    return Message(Kind.DEADLINE, subject, body, fields)


def cab_agenda_message(meeting, items) -> Message:
    """A CAB meeting's agenda (docs/cab.md), as an approval request: the board decides
    these changes in the meeting."""
    when = f"{meeting.starts_at:%Y-%m-%d %H:%M} UTC"
    lines = [f"{i.change.reference} {i.change.release.application.name} "
             f"{i.change.release.version}" for i in items]
    url = f"{base_url()}/cab/meetings/{meeting.pk}/"
    fields = {"cab_meeting": meeting.pk, "schedule": meeting.schedule.name,
              "environment": meeting.schedule.environment.slug,
              "starts_at": meeting.starts_at.isoformat(),
              "changes": [i.change.reference for i in items], "url": url}
    body = "\n".join([f"{meeting.schedule.name}, {when}.", "", "Agenda:",
                      *(f"- {line}" for line in lines or ["nothing yet"]), "",
                      f"Open the agenda: {url}", ""])
    return Message(Kind.APPROVAL_REQUEST, f"[CAB AGENDA] {meeting.schedule.name} {when}",
                   body, fields)


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
    finished = timezone.localtime(deployment.finished_at or clock.now())
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
