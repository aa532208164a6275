"""Read queries shared by pages and the API, with their joins decided once."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import OuterRef, Prefetch, Q, QuerySet, Subquery

from approvals.models import Approval, ChangeRequest, Gate, GateRole
from deployments.models import Deployment
from portal.permissions import environment_permissions, is_auditor


@dataclass(frozen=True)
class Blocker:
    code: str
    message: str

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def change_blockers(change: ChangeRequest) -> list[Blocker]:
    """Everything that stands between this change and a deployment, in plain words."""
    blockers: list[Blocker] = []
    status = change.status
    if status in (ChangeRequest.Status.REJECTED, ChangeRequest.Status.CANCELLED,
                  ChangeRequest.Status.DEPLOYED, ChangeRequest.Status.FAILED,
                  ChangeRequest.Status.ROLLED_BACK):
        blockers.append(Blocker("change_closed",
                                f"the change is {change.get_status_display().lower()}"))
        return blockers
    if status == ChangeRequest.Status.DRAFT:
        blockers.append(Blocker("draft", "the change is a draft; submit it for approval"))
    if status == ChangeRequest.Status.DEPLOYING:
        blockers.append(Blocker("deploying", "the change is already deploying"))
    for gate in change.gates.all():
        if gate.status != Gate.Status.APPROVED:
            approved = sum(1 for a in gate.approvals.all()
                           if a.decision == Approval.Decision.APPROVED)
            blockers.append(Blocker(
                f"gate_{gate.role}",
                f"{gate.get_role_display()} approval pending ({approved} of {gate.required})",
            ))
    environment = change.environment
    if environment.locked:
        blockers.append(Blocker(
            "environment_locked",
            f"{environment.name} is locked: {environment.lock_reason or 'no reason given'}",
        ))
    if hasattr(change, "other_active_deployment_id"):
        running_id = change.other_active_deployment_id
    else:
        running_id = _other_active(change.pk, change.release.application_id,
                                   environment.pk).values_list("pk", flat=True).first()
    if running_id is not None and status != ChangeRequest.Status.DEPLOYING:
        blockers.append(Blocker(
            "deployment_in_progress",
            f"deployment #{running_id} of {change.release.application.slug} "
            f"to {environment.slug} is still in progress",
        ))
    return blockers


def _other_active(change_id, application_id, environment_id) -> QuerySet[Deployment]:
    return (Deployment.objects.filter(application_id=application_id,
                                      environment_id=environment_id,
                                      status__in=Deployment.ACTIVE)
            .exclude(change_id=change_id).order_by("-id"))


def change_detail_queryset() -> QuerySet[ChangeRequest]:
    """Changes with everything their page or API body shows, in a constant number of queries."""
    latest = Deployment.objects.filter(change_id=OuterRef("pk")).order_by("-id")
    other = _other_active(OuterRef("pk"), OuterRef("release__application_id"),
                          OuterRef("environment_id"))
    return ChangeRequest.objects.with_related().annotate(
        latest_deployment_id=Subquery(latest.values("pk")[:1]),
        other_active_deployment_id=Subquery(other.values("pk")[:1]),
    ).prefetch_related(
        Prefetch("gates", queryset=Gate.objects.prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related("approver"))
        )),
    )


def changes_visible_to(user) -> QuerySet[ChangeRequest]:
    """Changes to environments the user holds any permission on (or requested)."""
    if user.is_superuser or is_auditor(user):
        return change_detail_queryset()
    env_ids = list(environment_permissions(user).keys())
    return change_detail_queryset().filter(
        Q(environment_id__in=env_ids) | Q(requested_by=user)
    )


def decidable_roles(user) -> dict[int, set[str]]:
    """{environment id: {gate role, ...}} that ``user`` may decide."""
    roles: dict[int, set[str]] = {}
    for env_id, codenames in environment_permissions(user).items():
        mine = {role.value for role in GateRole if role.permission in codenames}
        if mine:
            roles[env_id] = mine
    return roles


def inbox_gates(user, *, environment: str = "", change_type: str = "") -> QuerySet[Gate]:
    """Pending gates of open changes that ``user`` may decide and has not yet decided."""
    roles = decidable_roles(user)
    if not roles:
        return Gate.objects.none()
    allowed = Q()
    for env_id, role_set in roles.items():
        allowed |= Q(change__environment_id=env_id, role__in=sorted(role_set))
    gates = (
        Gate.objects.filter(allowed, status=Gate.Status.PENDING,
                            change__status=ChangeRequest.Status.PENDING_APPROVAL)
        .exclude(change__requested_by=user)
        .exclude(change__approvals__approver=user)
        .select_related("change__release__application", "change__environment",
                        "change__requested_by")
        .prefetch_related(Prefetch("approvals", queryset=Approval.objects.select_related(
            "approver")))
        .order_by("change__submitted_at", "id")
    )
    if environment:
        gates = gates.filter(change__environment__slug=environment)
    if change_type:
        gates = gates.filter(change__change_type=change_type)
    return gates
