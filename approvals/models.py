"""The decision: change requests, their policies, gates and approvals."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from deployments.models import Environment, Release


class ChangeType(models.TextChoices):
    STANDARD = "standard", "Standard"
    HOTFIX = "hotfix", "Hotfix"
    EMERGENCY = "emergency", "Emergency"


class Strategy(models.TextChoices):
    ALL_AT_ONCE = "all_at_once", "All at once"
    ROLLING = "rolling", "Rolling"
    BLUE_GREEN = "blue_green", "Blue-green"
    CANARY = "canary", "Canary"


class GateRole(models.TextChoices):
    TECH_LEAD = "tech_lead", "Tech lead"
    QA = "qa", "QA"
    CAB = "cab", "Change approval board"
    SECURITY = "security", "Security"
    BUSINESS = "business", "Business"
    EMERGENCY = "emergency", "Emergency"

    @property
    def permission(self) -> str:
        """The object permission on the environment that lets a person decide this gate."""
        return f"approve_{self.value}"


class ApprovalPolicy(models.Model):
    """Which gates a change of one type to one environment must pass (DESIGN.md section 4)."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="policies")
    change_type = models.CharField(max_length=20, choices=ChangeType.choices)

    class Meta:
        verbose_name_plural = "approval policies"
        constraints = [
            models.UniqueConstraint(fields=["environment", "change_type"],
                                    name="policy_unique_env_type"),
        ]

    def __str__(self) -> str:
        return f"{self.environment} / {self.get_change_type_display()}"


class PolicyGate(models.Model):
    policy = models.ForeignKey(ApprovalPolicy, on_delete=models.CASCADE, related_name="gates")
    role = models.CharField(max_length=20, choices=GateRole.choices)
    required = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "role"], name="policy_gate_unique_role"),
            models.CheckConstraint(condition=models.Q(required__gte=1),
                                   name="policy_gate_required_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.get_role_display()} × {self.required}"


class ChangeRequestQuerySet(models.QuerySet):
    def with_related(self):
        return self.select_related(
            "release__application", "environment", "requested_by", "on_call"
        )


class ChangeRequest(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PENDING_APPROVAL = "pending_approval", "Pending approval"
        APPROVED = "approved", "Approved"
        SCHEDULED = "scheduled", "Scheduled"
        DEPLOYING = "deploying", "Deploying"
        DEPLOYED = "deployed", "Deployed"
        FAILED = "failed", "Failed"
        ROLLED_BACK = "rolled_back", "Rolled back"
        REJECTED = "rejected", "Rejected"
        CANCELLED = "cancelled", "Cancelled"

    OPEN = {Status.DRAFT, Status.PENDING_APPROVAL, Status.APPROVED, Status.SCHEDULED}

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="changes")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="changes")
    change_type = models.CharField(max_length=20, choices=ChangeType.choices,
                                   default=ChangeType.STANDARD)
    strategy = models.CharField(max_length=20, choices=Strategy.choices,
                                default=Strategy.ALL_AT_ONCE)
    risk = models.CharField(max_length=10, blank=True,
                            choices=[("low", "Low"), ("medium", "Medium"), ("high", "High")])
    impact = models.TextField(blank=True)
    rollback_plan = models.TextField(blank=True)
    on_call = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                on_delete=models.PROTECT, related_name="+")
    scheduled_for = models.DateTimeField(null=True, blank=True)
    deploy_when_approved = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT,
                              db_index=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                     related_name="requested_changes")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = ChangeRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"CR-{self.pk} {self.release} to {self.environment.slug}"

    @property
    def reference(self) -> str:
        return f"CR-{self.pk}"


class Gate(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="gates")
    role = models.CharField(max_length=20, choices=GateRole.choices)
    required = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["change", "role"], name="gate_unique_role"),
        ]

    def __str__(self) -> str:
        return f"{self.change.reference} {self.get_role_display()}"

    @property
    def permission(self) -> str:
        return GateRole(self.role).permission


class Approval(models.Model):
    class Decision(models.TextChoices):
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="approvals")
    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="approvals")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [
            # One person decides at most one gate of a change; two clicks at
            # once from the same person cannot both count.
            models.UniqueConstraint(fields=["change", "approver"],
                                    name="approval_one_gate_per_person"),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision} {self.gate}"
