"""The decision: change requests, their policies, gates and approvals."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Environment, Release
from core import clock


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
    # Other conditions of the policy (DESIGN.md section 4, SOP 3.3 and 5).
    requires_window = models.BooleanField(
        default=False, help_text="Deploy only inside a maintenance window.")
    requires_promotion = models.BooleanField(
        default=False, help_text="The same release must have succeeded in the environment "
                                 "before this one.")
    requires_on_call = models.BooleanField(default=False, help_text="An on-call engineer "
                                                                    "must be named.")
    requires_rollback_plan = models.BooleanField(default=False)
    passes_freeze = models.BooleanField(default=False,
                                        help_text="May deploy during a change freeze.")
    opens_review = models.BooleanField(
        default=False, help_text="Open a post-implementation review for CAB afterwards.")
    # Deadlines (docs/cab.md): approve-by for the gates, start-by once approved.
    approve_within_hours = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Gates not decided this many hours after the "
                                         "change is submitted expire; empty: no expiry.")
    execute_within_days = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="An approved change not started this many days "
                                         "after its approval loses its approvals; empty: "
                                         "no limit.")
    # Risk (docs/cab.md): a change whose score at submission is at or above the
    # threshold gets the extra gate too.
    risk_threshold = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Risk score (0-100) from which the extra gate is "
                                         "added at submission; empty: never.")
    risk_extra_gate = models.CharField(
        max_length=20, blank=True, choices=GateRole.choices,
        help_text="The gate added to a change whose risk reaches the threshold.")
    # Conflicts (approvals.conflicts): shown to CAB always; they block only when asked.
    conflicts_block = models.BooleanField(
        default=False, help_text="A conflict with another change, a freeze or the on-call "
                                 "engineer's time stops the change from starting.")

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


class Risk(models.TextChoices):
    """The requester's estimate of a change's risk (the form, the API and the model)."""

    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


class ChangeRequestQuerySet(models.QuerySet):
    def with_related(self):
        return self.select_related(
            "release__application", "environment", "requested_by", "on_call", "deployer"
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
    risk = models.CharField(max_length=10, blank=True, choices=Risk.choices)
    impact = models.TextField(blank=True)
    rollback_plan = models.TextField(blank=True)
    on_call = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                on_delete=models.PROTECT, related_name="+")
    scheduled_for = models.DateTimeField(null=True, blank=True)
    deploy_when_approved = models.BooleanField(default=False)
    # Who starts the deployment when it starts by itself (deploy_when_approved or
    # scheduled_for): the person who asked for that, checked again for `deploy` at the
    # start, and named as the deployment's actor rather than the last approver.
    deployer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                 on_delete=models.PROTECT, related_name="+",
                                 help_text="Starts the deployment when it starts by itself.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT,
                              db_index=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                     related_name="requested_changes")
    created_at = models.DateTimeField(default=clock.now, db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Deadlines (docs/cab.md): start by this time once approved, else the
    # approvals lapse; when the warning before it was sent (sent once).
    execute_by = models.DateTimeField(null=True, blank=True, db_index=True)
    execute_warned_at = models.DateTimeField(null=True, blank=True)

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
        # Not decided by its approve-by time: closed, the change back to draft.
        EXPIRED = "expired", "Expired"

    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="gates")
    role = models.CharField(max_length=20, choices=GateRole.choices)
    required = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # Deadlines (docs/cab.md): decide by this time or the gate expires; when
    # the warning before it was sent (sent once).
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    expiry_warned_at = models.DateTimeField(null=True, blank=True)

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
    """One person's decision on one gate, bound to a fingerprint of what was approved."""

    class Decision(models.TextChoices):
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="approvals")
    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="approvals")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(default=clock.now)
    # Hash per concern of what was approved (artifact, strategy, rollback plan,
    # migration plan, configuration): an edit reopens only the gates concerned.
    fingerprint = models.JSONField(default=dict, blank=True)
    on_behalf_of = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="+",
                                     help_text="The delegator, when decided by delegation.")
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [
            # One person decides at most one gate of a change; two clicks at
            # once from the same person cannot both count. A withdrawn decision
            # frees the person to decide again.
            models.UniqueConstraint(fields=["change", "approver"],
                                    condition=models.Q(withdrawn_at__isnull=True),
                                    name="approval_one_gate_per_person"),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision} {self.gate}"


class Delegation(models.Model):
    """A person's authority over one gate role in one environment, lent to another until expiry."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="delegations")
    role = models.CharField(max_length=20, choices=GateRole.choices)
    delegator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                  related_name="delegations_given")
    delegate = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="delegations_received")
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=clock.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(delegator=models.F("delegate")),
                                   name="delegation_not_to_self"),
        ]

    def __str__(self) -> str:
        return f"{self.delegator} → {self.delegate}: {self.role} on {self.environment.slug}"


class ChecklistKind(models.TextChoices):
    CODE_READINESS = "code_readiness", "Code readiness (SOP 3.1)"
    INFRA_READINESS = "infra_readiness", "Infrastructure readiness (SOP 3.2)"
    APPROVAL = "approval", "Approval requirements (SOP 3.3)"
    COMPLIANCE = "compliance", "Compliance (SOP 13.2)"
    ROLLBACK_VERIFICATION = "rollback_verification", "Rollback verification (SOP 8.3)"


# Pre-deployment lists block a deployment until done; the others open afterwards.
PRE_DEPLOYMENT_KINDS = {ChecklistKind.CODE_READINESS, ChecklistKind.INFRA_READINESS,
                        ChecklistKind.APPROVAL}


class ChecklistTemplate(models.Model):
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="checklist_templates")
    change_type = models.CharField(max_length=20, choices=ChangeType.choices)
    kind = models.CharField(max_length=30, choices=ChecklistKind.choices)
    position = models.PositiveSmallIntegerField(default=0)
    text = models.CharField(max_length=200)
    # Empty for a manual item; else the name of an automatic check (approvals.checks).
    auto_check = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["environment", "change_type", "kind", "position"]

    def __str__(self) -> str:
        return self.text


class ChecklistItem(models.Model):
    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE,
                               related_name="checklist")
    kind = models.CharField(max_length=30, choices=ChecklistKind.choices)
    position = models.PositiveSmallIntegerField(default=0)
    text = models.CharField(max_length=200)
    auto_check = models.CharField(max_length=40, blank=True)
    done = models.BooleanField(default=False)
    done_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                on_delete=models.PROTECT, related_name="+")
    done_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)
    deployment_id = models.BigIntegerField(null=True, blank=True,
                                           help_text="The rollback a verification list is for.")

    class Meta:
        ordering = ["change", "kind", "position", "id"]

    def __str__(self) -> str:
        return self.text

    @property
    def automatic(self) -> bool:
        return bool(self.auto_check)

    @property
    def pre_deployment(self) -> bool:
        return self.kind in PRE_DEPLOYMENT_KINDS


class MaintenanceWindow(models.Model):
    """A weekly period in a time zone during which standard changes may deploy."""

    WEEKDAYS = [(0, "Monday"), (1, "Tuesday"), (2, "Wednesday"), (3, "Thursday"),
                (4, "Friday"), (5, "Saturday"), (6, "Sunday")]

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="windows")
    weekday = models.PositiveSmallIntegerField(choices=WEEKDAYS)
    start_time = models.TimeField()
    end_time = models.TimeField(help_text="May be earlier than the start: the window then "
                                          "ends the next day.")
    timezone = models.CharField(max_length=60, default="UTC")

    class Meta:
        ordering = ["environment", "weekday", "start_time"]

    def __str__(self) -> str:
        return (f"{self.get_weekday_display()} {self.start_time:%H:%M}-{self.end_time:%H:%M} "
                f"{self.timezone}")


class Freeze(models.Model):
    """A change freeze: only emergency changes deploy during it. Yearly ones recur."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="freezes")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    recurs_yearly = models.BooleanField(default=False)
    reason = models.CharField(max_length=300)

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ends_at__gt=models.F("starts_at")),
                                   name="freeze_ends_after_start"),
        ]

    def __str__(self) -> str:
        return f"{self.reason} ({self.starts_at:%Y-%m-%d} – {self.ends_at:%Y-%m-%d})"


class PostImplementationReview(models.Model):
    """Opened for CAB after an emergency change deploys; visible until closed."""

    change = models.OneToOneField(ChangeRequest, on_delete=models.CASCADE,
                                  related_name="review")
    opened_at = models.DateTimeField(default=clock.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.PROTECT, related_name="+")
    findings = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"Review of {self.change.reference}"


# --- quality of approvals: who opened a change before deciding it (docs/cab.md)


class ChangeView(models.Model):
    """A signed-in person opened a change's page (or its release diff): at most one row
    per person, change and kind a minute, so a reload or a live refresh adds nothing.
    The approval-quality report reads it: an approval whose approver never opened the
    change before deciding was given without reading it."""

    class Kind(models.TextChoices):
        PAGE = "page", "Change page"
        # No page shows a change's release diff yet; a diff view records this kind.
        DIFF = "diff", "Release diff"

    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="views")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PAGE)
    at = models.DateTimeField(help_text="The first request of the minute.")
    minute = models.DateTimeField(help_text="``at`` truncated to the minute.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["change", "user", "kind", "minute"],
                                    name="change_view_once_a_minute"),
        ]
        indexes = [models.Index(fields=["user", "change", "at"], name="change_view_reader")]

    def __str__(self) -> str:
        return f"{self.user} opened {self.change.reference} ({self.kind}) at {self.at}"


# Risk (docs/cab.md): the portal's explained score of a change, kept at each
# assessment; the change's current assessment is its latest.
class RiskAssessment(models.Model):
    class Trigger(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        DECISION = "decision", "Decision"
        EDITED = "edited", "Edited"

    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE,
                               related_name="risk_assessments")
    score = models.PositiveSmallIntegerField()
    # [{"name", "label", "value", "weight", "points", "explanation"}] (approvals.risk).
    factors = models.JSONField(default=list)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    created_at = models.DateTimeField(default=clock.now)
    # The policy's threshold this score reached and the gate it added (submission only).
    threshold = models.PositiveSmallIntegerField(null=True, blank=True)
    added_gate = models.CharField(max_length=20, blank=True, choices=GateRole.choices)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["change", "-created_at", "-id"],
                                name="risk_latest_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(score__lte=100),
                                   name="risk_score_at_most_100"),
        ]

    def __str__(self) -> str:
        return f"{self.change.reference} risk {self.score}"


# CAB meetings (docs/cab.md): a recurring meeting of the board, its agenda, who
# attended and what was decided in it.
def _validate_timezone(value: str) -> None:
    import zoneinfo

    from django.core.exceptions import ValidationError
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"{value!r} is not a time zone name") from exc


class CabSchedule(models.Model):
    name = models.CharField(max_length=100)
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT,
                                    related_name="cab_schedules")
    weekday = models.PositiveSmallIntegerField(choices=MaintenanceWindow.WEEKDAYS)
    time = models.TimeField()
    timezone = models.CharField(max_length=60, default="UTC", validators=[_validate_timezone])
    duration_minutes = models.PositiveSmallIntegerField(default=60)
    chair = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                              related_name="chaired_cab_schedules")
    agenda_lead_hours = models.PositiveSmallIntegerField(default=24)
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.name


class CabMeeting(models.Model):
    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        IN_PROGRESS = "in_progress", "In progress"
        CLOSED = "closed", "Closed"

    schedule = models.ForeignKey(CabSchedule, on_delete=models.PROTECT, related_name="meetings")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLANNED)
    closed_at = models.DateTimeField(null=True, blank=True)
    agenda_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-starts_at"]
        constraints = [models.UniqueConstraint(fields=["schedule", "starts_at"],
                                               name="cab_meeting_once")]

    def __str__(self) -> str:
        return f"{self.schedule} {self.starts_at:%Y-%m-%d %H:%M} UTC"


class CabAgendaItem(models.Model):
    class Source(models.TextChoices):
        AGENDA = "agenda", "Agenda"
        ADDED = "added", "Added"

    class Decision(models.TextChoices):
        NONE = "", "Undecided"
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"
        DEFER = "defer", "Defer"

    meeting = models.ForeignKey(CabMeeting, on_delete=models.CASCADE, related_name="items")
    change = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE,
                               related_name="cab_items")
    position = models.PositiveSmallIntegerField(default=0)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.AGENDA)
    deferred = models.BooleanField(default=False)
    defer_reason = models.CharField(max_length=300, blank=True)
    decision = models.CharField(max_length=10, choices=Decision.choices, blank=True,
                                default="")
    comment = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["meeting", "change"],
                                               name="cab_item_once")]

    def __str__(self) -> str:
        return f"{self.change.reference} at {self.meeting}"


class CabAttendance(models.Model):
    meeting = models.ForeignKey(CabMeeting, on_delete=models.CASCADE, related_name="attendance")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="+")
    present = models.BooleanField(default=False)
    marked_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["meeting", "user"],
                                               name="cab_attendance_once")]

    def __str__(self) -> str:
        return f"{self.user} {'present' if self.present else 'absent'} at {self.meeting}"


# --- policies as code: versions of the policy document (approvals.policy_models)
from approvals.policy_models import PolicyApproval, PolicyVersion  # noqa: E402, F401

# --- evaluate mode: proposed policy versions beside the active one (policy_shadow_models)
from approvals.policy_shadow_models import PolicyShadowDifference  # noqa: E402, F401
