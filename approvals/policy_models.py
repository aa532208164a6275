"""Versions of the policy document and the decisions on a proposed one (docs/policies.md).

Kept beside ``approvals.models`` (which imports them) so that module stays readable.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core import clock


class PolicyVersion(models.Model):
    """One version of the portal's policy document. At most one is active: the one
    every decision is taken under; a proposed one binds once approved and due."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved, waiting for its time"
        ACTIVE = "active", "Active"
        SUPERSEDED = "superseded", "Superseded"
        REJECTED = "rejected", "Rejected"

    number = models.PositiveIntegerField(unique=True)
    document = models.TextField()
    digest = models.CharField(max_length=64, db_index=True,
                              help_text="SHA-256 of the document's canonical text.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PROPOSED)
    effective_at = models.DateTimeField(null=True, blank=True,
                                        help_text="When an approved version becomes active.")
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=clock.now)
    based_on = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+",
                                 help_text="The version active when this one was proposed.")
    gates = models.JSONField(default=dict, blank=True,
                             help_text="Approvals it needs, {role: count}, from the "
                                       "document active when it was proposed.")
    summary = models.CharField(max_length=300, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=models.Q(status="active"),
                                    name="policy_version_one_active"),
        ]

    def __str__(self) -> str:
        return f"Policy v{self.number} ({self.get_status_display().lower()})"


class PolicyApproval(models.Model):
    """A decision on a proposed policy version, for one of its gates."""

    class Decision(models.TextChoices):
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    version = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE,
                                related_name="approvals")
    role = models.CharField(max_length=20)
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [models.UniqueConstraint(fields=["version", "approver"],
                                               name="policy_approval_once_per_person")]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision} v{self.version.number} as {self.role}"
