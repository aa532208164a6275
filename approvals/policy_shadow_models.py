"""Evaluate mode (docs/policies.md, backtest): where a proposed policy version, running
beside the active one on a live decision, would have decided otherwise.

Kept beside ``approvals.models`` (which imports it) so that module stays readable.
"""

from __future__ import annotations

from django.db import models

from core import clock


class PolicyShadowDifference(models.Model):
    """One live decision on which a proposed version disagreed with the active one, or
    could not be evaluated (``error``). It never bound the decision."""

    class Action(models.TextChoices):
        SUBMIT = "submit", "Submission"
        START = "start", "Start"

    version = models.ForeignKey("approvals.PolicyVersion", on_delete=models.CASCADE,
                                related_name="shadow_differences",
                                help_text="The proposed version.")
    change = models.ForeignKey("approvals.ChangeRequest", on_delete=models.CASCADE,
                               related_name="+")
    action = models.CharField(max_length=10, choices=Action.choices)
    active_digest = models.CharField(max_length=64)
    # {"gates", "rules", "blockers" (codes), "start_allowed"} of each document.
    active = models.JSONField(default=dict)
    proposed = models.JSONField(default=dict)
    error = models.TextField(blank=True, help_text="Why the proposed version could not "
                                                   "be evaluated, if it could not.")
    at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["version", "-at"], name="policy_shadow_version")]

    def __str__(self) -> str:
        return f"v{self.version_id} differs on CR-{self.change_id} ({self.action})"
