"""Incoming hooks: CI check results, pushes, Prometheus Alertmanager alerts.

A hook authenticates either with an API token (``Authorization: Bearer``) or
with its own secret, ``PORTAL_HOOK_SECRET_CI``, ``PORTAL_HOOK_SECRET_PUSH`` or
``PORTAL_HOOK_SECRET_ALERTMANAGER`` (settings or environment; never committed),
in one of two forms:

- Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` (seconds since the
  epoch) and ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``
  (several space-separated signatures allowed, for key rotation). A timestamp
  more than ``SIGNATURE_TOLERANCE`` away from the portal's clock, either way, is
  refused (401 ``stale_signature``).
- A signature of the body alone: ``X-Hub-Signature-256`` (GitHub, with its
  ``X-GitHub-Delivery`` id) or ``X-Portal-Signature``, both ``sha256=<hex>``.

A signed hook acts as the service account named by ``PORTAL_HOOK_USER``
(default ``ci-bot``), whose object permissions apply as for anyone.

A delivery is applied once (``hook_delivery_once``): its id, and for a body
signed without a timestamp the body's digest, are recorded in the transaction
that applies it, under a unique constraint; a replay is answered as a duplicate.

The services here are the hooks' state changes; they call the services of
``deployments`` and ``approvals`` for everything those apps own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from rest_framework import authentication, exceptions

from audit.trail import audit_record
from core import clock, context
from core.api import ViewBoundCredential
from core.errors import Conflict, DomainError, Invalid, Refused
from identity.signin import normalize_username
from integrations.models import HookDelivery

logger = logging.getLogger(__name__)

SIGNATURE_HEADERS = ("X-Portal-Signature", "X-Hub-Signature-256")
STANDARD_SIGNATURE_HEADER = "webhook-signature"
DELIVERY_ID_HEADERS = ("webhook-id", "X-GitHub-Delivery")
# Standard Webhooks' recommended tolerance: a captured request is useless after it.
SIGNATURE_TOLERANCE = timedelta(minutes=5)
MAX_DELIVERY_ID = 255
DEFAULT_HOOK_USER = "ci-bot"
PUSH_ENVIRONMENT = "development"  # SOP 2.2: development deploys automatically on a push


def _setting(name: str, default: str = "") -> str:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return value or default


def hook_secret(hook: str) -> str:
    return _setting(f"PORTAL_HOOK_SECRET_{hook.upper()}")


class StaleSignature(DomainError):
    """A correctly signed hook whose timestamp is outside the tolerance: a replay."""

    status = 401
    code = "stale_signature"


def sign(secret: str, body: bytes) -> str:
    """The body-only signature header value a sender computes for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _standard_key(secret: str) -> bytes:
    # Standard Webhooks secrets are "whsec_<base64 key>"; any other secret is used as is.
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign_standard(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks v1) for one delivery."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(_standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _delivery_id(value: str) -> str:
    value = (value or "").strip()
    if len(value) > MAX_DELIVERY_ID or not value.isprintable():
        raise exceptions.AuthenticationFailed(
            f"A delivery id must be 1 to {MAX_DELIVERY_ID} printable characters.")
    return value


def delivery_keys_from_headers(headers) -> tuple[str, ...]:
    """The delivery id a token-authenticated caller sent, if any, as a delivery key."""
    for name in DELIVERY_ID_HEADERS:
        delivery_id = _delivery_id(headers.get(name, ""))
        if delivery_id:
            return (f"id:{delivery_id}",)
    return ()


@dataclass(frozen=True)
class HookCredential(ViewBoundCredential):
    """A request authenticated by a hook's secret; it opens that hook only.

    ``delivery_keys`` identify the delivery, so that a replay is not applied again.
    """

    hook: str
    delivery_keys: tuple[str, ...] = ()


def _check_standard(secret: str, headers, body: bytes) -> tuple[str, ...]:
    delivery_id = _delivery_id(headers.get("webhook-id", ""))
    raw_timestamp = (headers.get("webhook-timestamp") or "").strip()
    if not delivery_id or not raw_timestamp:
        raise exceptions.AuthenticationFailed(
            "A webhook-signature needs its webhook-id and webhook-timestamp headers.")
    if not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise exceptions.AuthenticationFailed(
            "webhook-timestamp must be whole seconds since the Unix epoch.")
    timestamp = int(raw_timestamp)
    expected = sign_standard(secret, delivery_id, timestamp, body).encode()
    offered = headers.get(STANDARD_SIGNATURE_HEADER, "").split()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in offered):
        raise exceptions.AuthenticationFailed("The hook signature does not match the body.")
    skew = abs(clock.now().timestamp() - timestamp)
    if skew > SIGNATURE_TOLERANCE.total_seconds():
        raise StaleSignature(
            f"The webhook-timestamp is {int(skew)} seconds away from the portal's clock; "
            f"signatures are accepted for {int(SIGNATURE_TOLERANCE.total_seconds())} seconds.")
    return (f"id:{delivery_id}",)


def _check_body_signature(secret: str, headers, name: str, body: bytes) -> tuple[str, ...]:
    expected = sign(secret, body)
    if not hmac.compare_digest(expected.encode(), headers[name].strip().encode()):
        raise exceptions.AuthenticationFailed("The hook signature does not match the body.")
    if name == "X-Hub-Signature-256" and not headers.get("X-GitHub-Delivery"):
        raise exceptions.AuthenticationFailed(
            "X-Hub-Signature-256 needs GitHub's X-GitHub-Delivery id with it.")
    # Nothing but the body is signed, so a replay can carry any delivery id it likes:
    # the signed body itself is what must not be applied twice.
    return (*delivery_keys_from_headers(headers),
            "body:" + hashlib.sha256(body).hexdigest())


class HookSignatureAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        headers = request.headers
        # A signature header that is present is checked, even empty: a request never falls
        # through to another credential past a signature that does not verify.
        body_header = next((h for h in SIGNATURE_HEADERS if h in headers), None)
        if body_header is None and STANDARD_SIGNATURE_HEADER not in headers:
            return None
        view = request.parser_context.get("view") if request.parser_context else None
        hook = getattr(view, "hook_name", "")
        secret = hook_secret(hook) if hook else ""
        if not secret:
            raise exceptions.AuthenticationFailed(
                "This hook has no secret configured; send an API token instead.")
        body = request._request.body
        if STANDARD_SIGNATURE_HEADER in headers:
            keys = _check_standard(secret, headers, body)
        else:
            keys = _check_body_signature(secret, headers, body_header, body)
        username = _setting("PORTAL_HOOK_USER", DEFAULT_HOOK_USER)
        user = get_user_model().objects.filter(username=normalize_username(username),
                                               is_active=True).first()
        if user is None:
            raise exceptions.AuthenticationFailed(
                f"The hook service account {username!r} does not exist or is inactive.")
        context.set_client(f"{hook} hook")
        return user, HookCredential(hook, keys)

    def authenticate_header(self, request):
        return "Bearer"


T = TypeVar("T")


def delivery_retention() -> timedelta:
    return timedelta(days=getattr(settings, "PORTAL_HOOK_DELIVERY_RETENTION_DAYS", 30))


def _claim(hook: str, key: str) -> HookDelivery | None:
    """Record ``key`` for ``hook``, or None when it is already recorded.

    A concurrent delivery of the same key waits on the unique index until the
    first one's transaction ends: it then either sees the key (a duplicate) or,
    when the first was rolled back, claims it itself.
    """
    try:
        with transaction.atomic():
            return HookDelivery.objects.create(hook=hook, key=key[:300])
    except IntegrityError:
        return None


def _forget(claimed: Sequence[HookDelivery]) -> None:
    """Drop the replay records claimed in this transaction: nothing was applied."""
    HookDelivery.objects.filter(pk__in=[row.pk for row in claimed]).delete()


def hook_delivery_once(*, actor, hook: str, keys: Sequence[str],
                       apply: Callable[[], T],
                       applied: Callable[[T], bool] | None = None) -> tuple[bool, T | None]:
    """Apply one hook delivery unless one of its ``keys`` was applied before.

    Returns (True, what ``apply`` returned), or (False, None) for a replay, which
    changes nothing but its own audit event. The keys are recorded in the
    transaction that applies the delivery, so a delivery that fails is not
    recorded and the sender's retry is applied. A refused delivery (a domain
    error, or a result that ``applied`` says applied nothing) is not recorded
    either, while the refusal's own audit event stays: only an applied delivery
    is remembered, so a later delivery of the same content by someone who may
    act on it is applied.
    """
    if not keys:
        return True, apply()
    refusal = None
    with transaction.atomic():
        claimed = []
        for key in keys:
            row = _claim(hook, key)
            if row is None:
                transaction.set_rollback(True)
                break
            claimed.append(row)
        else:
            try:
                result = apply()
            except DomainError as exc:
                _forget(claimed)
                refusal = exc
            else:
                if applied is not None and not applied(result):
                    _forget(claimed)
                return True, result
    if refusal is not None:
        raise refusal
    with transaction.atomic():
        audit_record(actor=actor, action="hook.replay_ignored", object_type="hook",
                     object_id=hook, object_repr=f"{hook} hook",
                     after={"delivery": [key[:300] for key in keys]},
                     reason="a delivery already applied was received again")
    return False, None


def hook_deliveries_purge(*, now: datetime | None = None) -> int:
    """Forget delivery ids past their retention; returns how many went.

    Standard Webhooks deliveries older than the signature tolerance are refused
    anyway; a body signed without a timestamp could be replayed after its
    record is purged, which is why the retention is long (30 days by default).
    """
    cutoff = (now or clock.now()) - delivery_retention()
    deleted, _ = HookDelivery.objects.filter(received_at__lt=cutoff).delete()
    return deleted


def _merged(existing: list, new: list | None) -> list[str]:
    return sorted(set(existing or []) | {name.strip() for name in new or [] if name.strip()})


def _reported_at(result) -> datetime | None:
    try:
        return datetime.fromisoformat(result["reported_at"])
    except (TypeError, KeyError, ValueError):
        return None


def release_checks_record(*, actor, release, check: str | None = None, status: str = "",
                          url: str = "", summary: str = "", critical: int | None = None,
                          authors: list[str] | None = None, mergers: list[str] | None = None,
                          reported_at: datetime | None = None):
    """Record a CI check result and the authors and mergers of a release's commits.

    Authors and mergers accumulate (CI may report them in several calls); none
    of them may later approve a change that ships the release (DESIGN.md 8).
    A check reported again replaces the earlier result for that check, unless
    it is older (``reported_at``, default now) than the result held: a late or
    replayed report never overwrites a newer one. The returned release's
    ``report_superseded`` says whether that happened.
    """
    from catalog.models import Release

    if not actor.has_perm("catalog.report_ci"):
        raise Refused("only CI accounts report check results and authorship of releases",
                      code="not_permitted")
    now = clock.now()
    reported_at = reported_at or now
    if reported_at > now + SIGNATURE_TOLERANCE:
        # A report dated in the future would shut out every later one.
        raise Invalid("the report's time is in the future", fields={
            "reported_at": ["Send the time the check finished, not a future time."]})
    superseded = False
    with transaction.atomic():
        release = (Release.objects.select_for_update(of=("self",))
                   .select_related("application").get(pk=release.pk))
        before = {"checks": dict(release.checks), "authors": list(release.authors),
                  "mergers": list(release.mergers)}
        checks = dict(release.checks)
        # Compared under the release's row lock: two reports of one check settle in order.
        held = _reported_at(checks.get(check)) if check else None
        superseded = held is not None and reported_at < held
        if check and not superseded:
            checks[check] = {"status": status, "url": url, "summary": summary,
                             "reported_at": reported_at.isoformat(),
                             "received_at": now.isoformat(),
                             "reported_by": actor.get_username()}
            if critical is not None:
                checks[check]["critical"] = critical
        release.checks = checks
        release.authors = _merged(release.authors, authors)
        release.mergers = _merged(release.mergers, mergers)
        release.save(update_fields=["checks", "authors", "mergers"])
        audit_record(actor=actor, action="release.checks_reported", obj=release,
                     before=before, after={"check": check, "status": status, "url": url,
                                           "reported_at": reported_at.isoformat(),
                                           "superseded": superseded,
                                           "authors": release.authors,
                                           "mergers": release.mergers},
                     reason=(f"an older result of {check} than the one held was not applied"
                             if superseded else ""))
    release.report_superseded = superseded
    return release


def push_deploy(*, actor, application, version: str, ref: str = "",
                authors: list[str] | None = None, mergers: list[str] | None = None,
                **release_fields):
    """A push: register the release and deploy it to development without approvals.

    Safe to repeat, and to run concurrently: a push of a version already released to
    development returns the change and deployment it started the first time; two
    pushes of one version at once make one change (they take the release's row lock
    in turn).
    Returns (release, change, deployment, release_created).
    """
    from approvals import services as approval_services
    from approvals.models import ChangeRequest, ChangeType
    from catalog import services as catalog_services
    from catalog.models import Environment, Release
    from deployments.models import Deployment

    release, created = catalog_services.release_register(
        actor=actor, application=application, version=version, **release_fields)
    if authors or mergers:
        release = release_checks_record(actor=actor, release=release, authors=authors,
                                        mergers=mergers)
    environment = Environment.objects.filter(slug=PUSH_ENVIRONMENT).first()
    if environment is None:
        raise Conflict(f"there is no {PUSH_ENVIRONMENT} environment to deploy a push to",
                       code="no_push_environment")
    refusal = None
    with transaction.atomic():
        # One push of a release at a time: concurrent pushes of the same version (CI
        # retrying, two pipelines) queue on the release's row lock, so the second finds
        # the change the first made instead of making another.
        Release.objects.select_for_update(of=("self",)).filter(pk=release.pk).first()
        change = (ChangeRequest.objects.filter(
            release=release, environment=environment,
            status__in=[ChangeRequest.Status.APPROVED, ChangeRequest.Status.DEPLOYING,
                        ChangeRequest.Status.DEPLOYED])
            .order_by("-id").first())
        try:
            if change is None:
                change = approval_services.change_request_create(
                    actor=actor, release=release, environment=environment,
                    change_type=ChangeType.STANDARD,
                    impact=f"Pushed to {ref}" if ref else "Pushed")
            if change.status == ChangeRequest.Status.APPROVED:
                deployment = approval_services.change_request_deploy(actor=actor,
                                                                     change=change)
            else:
                deployment = (Deployment.objects.filter(change_id=change.pk)
                              .order_by("-id").first())
        except DomainError as exc:
            # Raised once this transaction is over, so the refusal's audit event stays.
            refusal = exc
    if refusal is not None:
        raise refusal
    return release, change, deployment, created


ROLLBACK_ACTION = "trigger_rollback"


def _alert_outcome(alert: dict, outcome: str, **extra) -> dict:
    labels = alert.get("labels") or {}
    return {"alertname": str(labels.get("alertname", "")),
            "fingerprint": str(alert.get("fingerprint", "")),
            "outcome": outcome, **extra}


ALERT_HOOK = "alert"
# What an alert did that is remembered; a refusal is not (its audit event is).
ALERT_APPLIED = frozenset({"rolled_back", "notified"})


def _alert_key(alert: dict) -> str:
    """Alertmanager resends a firing alert on every repeat interval with the same
    fingerprint and start; its resolution carries them too, with another status."""
    fingerprint = str(alert.get("fingerprint") or "")
    if not fingerprint:
        return ""
    return f"{fingerprint}|{alert.get('startsAt') or ''}|{alert.get('status') or ''}"


def alerts_receive(*, actor, payload: dict) -> list[dict]:
    """Act on an Alertmanager notification (SOP 9.2), alert by alert.

    A firing alert whose labels (or annotations) say ``action: trigger_rollback``
    and whose labels name ``application`` and ``environment`` rolls back the
    latest deployment there; every other alert is recorded for the people on
    call. Each alert's outcome is returned; one alert's refusal does not stop
    the others, so Alertmanager gets a 200 and does not resend the batch.

    An alert is acted on once: the first notification of a fingerprint and start
    time that is applied (rolled back, or recorded for the people on call) decides,
    and a repeat is answered ``duplicate``. An alert that was refused (its sender
    may not roll back, there was nothing to roll back, ...) is audited and not
    remembered, so the same alert sent later by someone who may act on it still
    rolls back. An alert never rolls back a deployment that is itself a rollback:
    undoing a rollback is for the on-call engineer to decide.
    """
    outcomes = []
    for alert in payload.get("alerts") or []:
        key = _alert_key(alert)
        with transaction.atomic():
            # The alert's key commits with what the alert did, or not at all. A
            # concurrent notification of the same alert waits here for this one.
            claimed = _claim(ALERT_HOOK, key) if key else None
            if key and claimed is None:
                outcomes.append(_alert_outcome(
                    alert, "duplicate",
                    detail="this alert (same fingerprint and start) was already acted on"))
                continue
            outcome = _alert_act(actor=actor, alert=alert, payload=payload)
            if claimed is not None and outcome["outcome"] not in ALERT_APPLIED:
                # Refused: its audit events stay, its replay record goes.
                _forget([claimed])
            outcomes.append(outcome)
    return outcomes


def alerts_applied(outcomes: list[dict]) -> bool:
    """Whether a notification applied any of its alerts (else it is not remembered)."""
    return any(outcome["outcome"] in ALERT_APPLIED for outcome in outcomes)


def _alert_act(*, actor, alert: dict, payload: dict) -> dict:
    from deployments import services as deployment_services
    from deployments.models import Deployment

    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    action = labels.get("action") or annotations.get("action") or ""
    application = labels.get("application") or ""
    environment = labels.get("environment") or ""
    firing = alert.get("status", payload.get("status")) == "firing"
    if not (firing and action == ROLLBACK_ACTION and application and environment):
        audit_record(actor=actor, action="alert.received", object_type="alert",
                     object_id=str(alert.get("fingerprint", ""))[:64],
                     object_repr=str(labels.get("alertname", "alert"))[:300],
                     environment=str(environment)[:50],
                     after={"status": alert.get("status"), "labels": labels,
                            "annotations": annotations})
        return _alert_outcome(alert, "notified")
    deployment = (Deployment.objects.filter(application__slug=application,
                                            environment__slug=environment)
                  .select_related("application", "environment", "release")
                  .order_by("-created_at", "-id").first())
    if deployment is None:
        return _alert_outcome(alert, "no_deployment",
                              detail=f"no deployment of {application} to "
                                     f"{environment} to roll back")
    if deployment.kind == Deployment.Kind.ROLLBACK:
        detail = (f"the latest deployment #{deployment.pk} is itself a rollback"
                  + (f" of #{deployment.rolled_back_deployment_id}"
                     if deployment.rolled_back_deployment_id else "")
                  + "; an alert never rolls back a rollback, the on-call engineer decides")
        audit_record(actor=actor, action="alert.rollback_refused", obj=deployment,
                     environment=deployment.environment.slug, reason=detail,
                     after={"code": "is_rollback",
                            "fingerprint": str(alert.get("fingerprint", ""))[:64],
                            "alertname": str(labels.get("alertname", ""))[:300]})
        return _alert_outcome(alert, "refused", code="is_rollback", detail=detail,
                              deployment=deployment.pk)
    summary = annotations.get("summary") or labels.get("alertname") or "alert"
    try:
        rolled = deployment_services.deployment_rollback(
            actor=actor, deployment=deployment, reason=f"Alertmanager: {summary}"[:2000])
    except DomainError as exc:
        return _alert_outcome(alert, "refused", code=exc.code, detail=exc.detail,
                              deployment=deployment.pk)
    return _alert_outcome(alert, "rolled_back", deployment=deployment.pk,
                          rollback_deployment=getattr(rolled, "pk", None))
