"""Incoming hooks: CI check results, pushes, Prometheus Alertmanager alerts.

A hook authenticates either with an API token (``Authorization: Bearer``) or
with its own secret: ``X-Portal-Signature: sha256=<hex HMAC-SHA256 of the raw
body>`` keyed with ``PORTAL_HOOK_SECRET_CI``, ``PORTAL_HOOK_SECRET_PUSH`` or
``PORTAL_HOOK_SECRET_ALERTMANAGER`` (settings or environment; never committed).
A signed hook acts as the service account named by ``PORTAL_HOOK_USER``
(default ``ci-bot``), whose object permissions apply as for anyone.

The services here are the hooks' state changes; they call the services of
``deployments`` and ``approvals`` for everything those apps own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from rest_framework import authentication, exceptions

from portal import context
from portal.audit import audit_record
from portal.errors import Conflict, DomainError, Refused
from portal.permissions import environment_permissions

logger = logging.getLogger(__name__)

SIGNATURE_HEADERS = ("X-Portal-Signature", "X-Hub-Signature-256")
DEFAULT_HOOK_USER = "ci-bot"
PUSH_ENVIRONMENT = "development"  # SOP 2.2: development deploys automatically on a push


def _setting(name: str, default: str = "") -> str:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return value or default


def hook_secret(hook: str) -> str:
    return _setting(f"PORTAL_HOOK_SECRET_{hook.upper()}")


def sign(secret: str, body: bytes) -> str:
    """The signature header value a sender computes for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class HookCredential:
    """A request authenticated by a hook's secret; it opens that hook only."""

    hook: str


class HookSignatureAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = next((request.headers.get(h) for h in SIGNATURE_HEADERS
                       if request.headers.get(h)), None)
        if header is None:
            return None
        view = request.parser_context.get("view") if request.parser_context else None
        hook = getattr(view, "hook_name", "")
        secret = hook_secret(hook) if hook else ""
        if not secret:
            raise exceptions.AuthenticationFailed(
                "This hook has no secret configured; send an API token instead.")
        expected = sign(secret, request._request.body)
        if not hmac.compare_digest(expected.encode(), header.strip().encode()):
            raise exceptions.AuthenticationFailed("The hook signature does not match the body.")
        username = _setting("PORTAL_HOOK_USER", DEFAULT_HOOK_USER)
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise exceptions.AuthenticationFailed(
                f"The hook service account {username!r} does not exist or is inactive.")
        context.set_client(f"{hook} hook")
        return user, HookCredential(hook)

    def authenticate_header(self, request):
        return "Bearer"


def _may_register(actor) -> None:
    if not any("request_change" in codes for codes in environment_permissions(actor).values()):
        raise Refused("you may not register releases or report on them", code="not_permitted")


def _merged(existing: list, new: list | None) -> list[str]:
    return sorted(set(existing or []) | {name.strip() for name in new or [] if name.strip()})


def release_checks_record(*, actor, release, check: str | None = None, status: str = "",
                          url: str = "", summary: str = "", critical: int | None = None,
                          authors: list[str] | None = None, mergers: list[str] | None = None):
    """Record a CI check result and the authors and mergers of a release's commits.

    Authors and mergers accumulate (CI may report them in several calls); none
    of them may later approve a change that ships the release (DESIGN.md 8).
    A check reported again replaces the earlier result for that check.
    """
    from deployments.models import Release

    if not actor.has_perm("deployments.report_ci"):
        raise Refused("only CI accounts report check results and authorship of releases",
                      code="not_permitted")
    with transaction.atomic():
        release = (Release.objects.select_for_update(of=("self",))
                   .select_related("application").get(pk=release.pk))
        before = {"checks": dict(release.checks), "authors": list(release.authors),
                  "mergers": list(release.mergers)}
        checks = dict(release.checks)
        if check:
            checks[check] = {"status": status, "url": url, "summary": summary,
                             "reported_at": timezone.now().isoformat(),
                             "reported_by": actor.get_username()}
            if critical is not None:
                checks[check]["critical"] = critical
        release.checks = checks
        release.authors = _merged(release.authors, authors)
        release.mergers = _merged(release.mergers, mergers)
        release.save(update_fields=["checks", "authors", "mergers"])
        audit_record(actor=actor, action="release.checks_reported", obj=release,
                     before=before, after={"check": check, "status": status, "url": url,
                                           "authors": release.authors,
                                           "mergers": release.mergers})
    return release


def push_deploy(*, actor, application, version: str, ref: str = "",
                authors: list[str] | None = None, mergers: list[str] | None = None,
                **release_fields):
    """A push: register the release and deploy it to development without approvals.

    Safe to repeat: a push of a version already released to development returns
    the change and deployment it started the first time.
    Returns (release, change, deployment, release_created).
    """
    from approvals import services as approval_services
    from approvals.models import ChangeRequest, ChangeType
    from deployments import services as deployment_services
    from deployments.models import Deployment, Environment

    release, created = deployment_services.release_register(
        actor=actor, application=application, version=version, **release_fields)
    if authors or mergers:
        release = release_checks_record(actor=actor, release=release, authors=authors,
                                        mergers=mergers)
    environment = Environment.objects.filter(slug=PUSH_ENVIRONMENT).first()
    if environment is None:
        raise Conflict(f"there is no {PUSH_ENVIRONMENT} environment to deploy a push to",
                       code="no_push_environment")
    change = (ChangeRequest.objects.filter(
        release=release, environment=environment,
        status__in=[ChangeRequest.Status.APPROVED, ChangeRequest.Status.DEPLOYING,
                    ChangeRequest.Status.DEPLOYED])
        .order_by("-id").first())
    if change is None:
        change = approval_services.change_request_create(
            actor=actor, release=release, environment=environment,
            change_type=ChangeType.STANDARD,
            impact=f"Pushed to {ref}" if ref else "Pushed")
    if change.status == ChangeRequest.Status.APPROVED:
        deployment = approval_services.change_request_deploy(actor=actor, change=change)
    else:
        deployment = Deployment.objects.filter(change_id=change.pk).order_by("-id").first()
    return release, change, deployment, created


ROLLBACK_ACTION = "trigger_rollback"


def _alert_outcome(alert: dict, outcome: str, **extra) -> dict:
    labels = alert.get("labels") or {}
    return {"alertname": str(labels.get("alertname", "")),
            "fingerprint": str(alert.get("fingerprint", "")),
            "outcome": outcome, **extra}


def alerts_receive(*, actor, payload: dict) -> list[dict]:
    """Act on an Alertmanager notification (SOP 9.2), alert by alert.

    A firing alert whose labels (or annotations) say ``action: trigger_rollback``
    and whose labels name ``application`` and ``environment`` rolls back the
    latest deployment there; every other alert is recorded for the people on
    call. Each alert's outcome is returned; one alert's refusal does not stop
    the others, so Alertmanager gets a 200 and does not resend the batch.
    """
    from deployments import services as deployment_services
    from deployments.models import Deployment

    outcomes = []
    for alert in payload.get("alerts") or []:
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        action = labels.get("action") or annotations.get("action") or ""
        application = labels.get("application") or ""
        environment = labels.get("environment") or ""
        firing = alert.get("status", payload.get("status")) == "firing"
        if not (firing and action == ROLLBACK_ACTION and application and environment):
            with transaction.atomic():
                audit_record(actor=actor, action="alert.received", object_type="alert",
                             object_id=str(alert.get("fingerprint", ""))[:64],
                             object_repr=str(labels.get("alertname", "alert"))[:300],
                             environment=str(environment)[:50],
                             after={"status": alert.get("status"), "labels": labels,
                                    "annotations": annotations})
            outcomes.append(_alert_outcome(alert, "notified"))
            continue
        deployment = (Deployment.objects.filter(application__slug=application,
                                                environment__slug=environment)
                      .select_related("application", "environment", "release")
                      .order_by("-created_at", "-id").first())
        if deployment is None:
            outcomes.append(_alert_outcome(alert, "no_deployment",
                                           detail=f"no deployment of {application} to "
                                                  f"{environment} to roll back"))
            continue
        rollback = getattr(deployment_services, "deployment_rollback", None)
        if rollback is None:
            outcomes.append(_alert_outcome(alert, "refused", code="rollback_unavailable",
                                           deployment=deployment.pk,
                                           detail="this portal cannot roll back yet"))
            continue
        summary = annotations.get("summary") or labels.get("alertname") or "alert"
        try:
            rolled = rollback(actor=actor, deployment=deployment,
                              reason=f"Alertmanager: {summary}"[:2000])
        except DomainError as exc:
            outcomes.append(_alert_outcome(alert, "refused", code=exc.code, detail=exc.detail,
                                           deployment=deployment.pk))
            continue
        outcomes.append(_alert_outcome(alert, "rolled_back", deployment=deployment.pk,
                                       rollback_deployment=getattr(rolled, "pk", None)))
    return outcomes
