"""The execution: deployments, their steps, log lines and analysis verdicts."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Application, Environment, Release, Target
from core import clock


class Deployment(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        # Cancelled while a step ran: the worker ends that step, then marks it cancelled.
        STOPPING = "stopping", "Stopping"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ROLLED_BACK = "rolled_back", "Rolled back"
        CANCELLED = "cancelled", "Cancelled"
        # A step was interrupted and is not safe to repeat: on-call decides
        # (retry it, mark it done, or roll back). Neither active nor final.
        NEEDS_ATTENTION = "needs_attention", "Needs attention"

    class Kind(models.TextChoices):
        DEPLOY = "deploy", "Deployment"
        ROLLBACK = "rollback", "Rollback"

    FINAL = {Status.SUCCEEDED, Status.FAILED, Status.ROLLED_BACK, Status.CANCELLED}
    # Still holds its target: no other deployment of the application there may start.
    ACTIVE = {Status.QUEUED, Status.RUNNING, Status.STOPPING}

    application = models.ForeignKey(Application, on_delete=models.PROTECT,
                                    related_name="deployments")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT,
                                    related_name="deployments")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="deployments")
    # Which change released it; the approvals app owns that model (DESIGN.md section 3).
    change_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    strategy = models.CharField(max_length=20, default="all_at_once")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.DEPLOY)
    # For a rollback: the deployment it undoes (the approvals app opens the SOP 8.3
    # rollback verification checklist when a rollback finishes).
    rolled_back_deployment = models.ForeignKey("self", null=True, blank=True,
                                               on_delete=models.PROTECT,
                                               related_name="rollbacks")
    # Dry run: health analysis runs and reports its verdicts but never rolls back.
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.PROTECT, related_name="+")
    task_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=clock.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    # The head of its application's queue in the environment: the one deployment there
    # that may run. Queued deployments behind it wait with False and are promoted, first
    # in first out, when it ends (services._advance_queue).
    holds_target = models.BooleanField(default=True)
    # What it runs with besides its release, fixed when it is made (deployments.inputs):
    # executor and settings, targets, environment settings, and for a change's
    # deployment the configuration version and change version that were approved.
    # Empty for deployments made before it was kept: those read the catalogue.
    inputs = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One deployment at a time per application and environment: the
            # database settles two deploy presses at once. A stopping deployment still
            # has a step running, and one waiting for on-call holds its target: both count.
            # Deployments waiting in the queue behind it (holds_target False) do not.
            models.UniqueConstraint(
                fields=["application", "environment"],
                condition=models.Q(status__in=["queued", "running", "stopping",
                                               "needs_attention"], holds_target=True),
                name="deployment_one_active_per_app_env",
            ),
        ]
        indexes = [
            # The queue of an application in an environment, first in first out.
            models.Index(fields=["environment", "application", "created_at", "id"],
                         condition=models.Q(status="queued", holds_target=False),
                         name="deployment_waiting_idx"),
            # History pages filtered by application and environment, newest first.
            models.Index(fields=["application", "environment", "-created_at", "-id"],
                         name="deployment_app_env_recent_idx"),
            # Auditors' SOP 13.2 status asks for each application's successful rollbacks.
            models.Index(fields=["application", "created_at"],
                         condition=models.Q(kind="rollback", status="succeeded"),
                         name="deployment_rollback_ok_idx"),
            # The version running per application and environment (the dashboard): the
            # latest success by end time, one index look-up per pair.
            models.Index(fields=["application", "environment", "-finished_at", "-id"],
                         condition=models.Q(status="succeeded"),
                         name="deployment_running_idx"),
            # What is in flight (the dashboard, the queue, the engine's sweeps): the few
            # unfinished deployments, never a scan of the finished ones.
            models.Index(fields=["environment", "created_at"],
                         condition=models.Q(status__in=["queued", "running", "stopping"]),
                         name="deployment_in_flight_idx"),
            # DORA figures read the deployments that ended in the last hours of a range
            # (the rest comes from reporting's daily roll-ups).
            models.Index(fields=["finished_at"], condition=models.Q(kind="deploy"),
                         name="deployment_ended_idx"),
        ]

    def __str__(self) -> str:
        return f"Deployment #{self.pk} {self.release} to {self.environment.slug}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class DeploymentStep(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=40)
    title = models.CharField(max_length=150)
    # The target this step acts on; empty for steps on the whole environment.
    target = models.ForeignKey(Target, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+")
    # Strategy phase ("canary 25%", "batch 2 of 3", "switch"), for the page.
    phase = models.CharField(max_length=40, blank=True)
    # Runs that claimed this step; a step interrupted by a dying worker is run again
    # (steps are idempotent) until the cap in services.STEP_MAX_ATTEMPTS.
    attempts = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["deployment", "position"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "position"], name="step_unique_position"),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.title}"


class DeploymentLogLine(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    at = models.DateTimeField(default=clock.now)
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()

    class Meta:
        ordering = ["deployment", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "seq"], name="log_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.deployment_id}:{self.seq} {self.message[:60]}"


class AnalysisVerdict(models.Model):
    """One health analysis decision with the figures it was based on (SOP 8.1)."""

    class Outcome(models.TextChoices):
        BASELINE = "baseline", "Baseline"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE,
                                   related_name="verdicts")
    step = models.ForeignKey(DeploymentStep, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="verdicts")
    phase = models.CharField(max_length=40, blank=True)
    provider = models.CharField(max_length=20, default="http")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    dry_run = models.BooleanField(default=False)
    # What was done about it: "", "continued", "rolled_back", "rollback_refused", "reported".
    action = models.CharField(max_length=20, blank=True)
    # {"canary": {...}, "baseline": {...}, "thresholds": {...}}: the numbers behind it.
    figures = models.JSONField(default=dict)
    reasons = models.JSONField(default=list)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["deployment", "created_at", "id"]

    def __str__(self) -> str:
        return f"#{self.deployment_id} {self.phase} {self.outcome}"
