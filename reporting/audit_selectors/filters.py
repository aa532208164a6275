"""Filters of the auditor's pages: the audit trail's events and the deployment history.

The reporting app reads the deployments and approvals models here read-only, for the
auditor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast

from approvals.models import Approval, ChangeRequest
from audit.models import AuditEvent
from catalog.models import Application, Release
from deployments.models import Deployment

# Rows on one page of the audit trail and of the auditor's deployment history.
PAGE_SIZE = 50


# ---------------------------------------------------------------------------
# Audit events: filters and keyset pages


@dataclass
class EventFilters:
    action: str = ""
    actor: str = ""
    object_type: str = ""
    object_id: str = ""
    environment: str = ""
    since: datetime | None = None
    until: datetime | None = None
    # An application's slug: events about it, its releases, changes and deployments.
    application: str = ""

    def any(self) -> bool:
        return any([self.action, self.actor, self.object_type, self.object_id,
                    self.environment, self.since, self.until, self.application])


def events_matching(filters: EventFilters) -> QuerySet[AuditEvent]:
    """Events matching ``filters``, newest first, each filter served by an index.

    ``action`` ending in "." is a prefix ("gate."), else exact; ``actor`` is a
    username (its events through the browser and its API tokens) or "system".
    Times become id bounds: events are written in time order under the chain lock,
    so a time range is an id range and every page stays an index range scan.
    """
    qs = AuditEvent.objects.all()
    if filters.action:
        qs = (qs.filter(action__startswith=filters.action) if filters.action.endswith(".")
              else qs.filter(action=filters.action))
    if filters.actor:
        if filters.actor == "system":
            qs = qs.filter(actor_kind="system")
        else:
            user_ids = list(get_user_model().objects.filter(username__iexact=filters.actor)
                            .values_list("pk", flat=True))
            # A deleted user's events keep their frozen name.
            qs = qs.filter(Q(actor_id__in=user_ids) if user_ids
                           else Q(actor_name=filters.actor))
    if filters.object_type:
        qs = qs.filter(object_type=filters.object_type)
    if filters.object_id:
        qs = qs.filter(object_id=filters.object_id)
    if filters.environment:
        qs = qs.filter(environment=filters.environment)
    if filters.application:
        qs = qs.filter(_about_application(filters.application))
    if filters.since:
        first = (AuditEvent.objects.filter(occurred_at__gte=filters.since)
                 .order_by("occurred_at", "id").values_list("id", flat=True).first())
        qs = qs.filter(id__gte=first) if first is not None else qs.none()
    if filters.until:
        last = (AuditEvent.objects.filter(occurred_at__lt=filters.until)
                .order_by("-occurred_at", "-id").values_list("id", flat=True).first())
        qs = qs.filter(id__lte=last) if last is not None else qs.none()
    return qs.order_by("-id")


def _about_application(slug: str) -> Q:
    """Events about the application ``slug``, its releases, changes and deployments."""
    def ids(qs):
        return qs.annotate(as_text=Cast("pk", CharField())).values("as_text")

    return (Q(object_type="application",
              object_id__in=ids(Application.objects.filter(slug=slug)))
            | Q(object_type="release",
                object_id__in=ids(Release.objects.filter(application__slug=slug)))
            | Q(object_type="changerequest",
                object_id__in=ids(ChangeRequest.objects.filter(release__application__slug=slug)))
            | Q(object_type="deployment",
                object_id__in=ids(Deployment.objects.filter(application__slug=slug))))


# ---------------------------------------------------------------------------
# Deployment history for auditors


@dataclass
class DeploymentFilters:
    application: str = ""
    environment: str = ""
    status: str = ""
    requester: str = ""
    approver: str = ""
    version: str = ""
    since: datetime | None = None
    until: datetime | None = None


def deployment_history(filters: DeploymentFilters) -> QuerySet:
    """Every deployment (auditors see all environments), newest first, with its change."""
    qs = Deployment.objects.select_related("application", "environment", "release",
                                           "started_by")
    if filters.application:
        qs = qs.filter(application__slug=filters.application)
    if filters.environment:
        qs = qs.filter(environment__slug=filters.environment)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.version:
        qs = qs.filter(release__version__startswith=filters.version)
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lt=filters.until)
    if filters.requester:
        qs = qs.filter(change_id__in=ChangeRequest.objects.filter(
            requested_by__username=filters.requester).values("pk"))
    if filters.approver:
        qs = qs.filter(change_id__in=Approval.objects.filter(
            approver__username=filters.approver).values("change_id"))
    return qs.order_by("-id")


def changes_by_id(change_ids) -> dict:
    """The changes behind deployments, with requester, in one query."""
    ids = {i for i in change_ids if i}
    if not ids:
        return {}
    return {c.pk: c for c in ChangeRequest.objects.select_related(
        "requested_by", "on_call", "environment", "release__application").filter(pk__in=ids)}
