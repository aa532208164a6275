"""What everything stands on: applications, environments (and their object
permissions), targets and releases."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from core import clock

SEMVER = RegexValidator(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$",
    "Use a semantic version such as 1.2.3 or 2.0.0-rc.1.",
)
SHA256 = RegexValidator(r"^[0-9a-f]{64}$", "A SHA-256 digest is 64 lowercase hex characters.")


class Application(models.Model):
    class Executor(models.TextChoices):
        LOCAL = "local", "Local (releases/<version> and a current symlink)"
        COMMAND = "command", "Command (a configured command per step)"
        WEBHOOK = "webhook", "Webhook (an external system runs each step)"
        SSH = "ssh", "SSH (remote commands on the targets, pinned host keys)"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    repository_url = models.URLField(blank=True)
    team = models.CharField(max_length=100, blank=True)
    executor = models.CharField(max_length=20, choices=Executor.choices, default=Executor.LOCAL)
    executor_settings = models.JSONField(default=dict, blank=True)
    # Conflicts: changes of applications that depend on one another, in one
    # environment at overlapping times, are shown to CAB (approvals.conflicts). What a
    # deployment runs does not depend on it.
    depends_on = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="dependents",
        help_text="Applications this one needs: changes to them in the same environment "
                  "at overlapping times are shown as conflicts.")

    class Meta:
        db_table = "deployments_application"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Environment(models.Model):
    """Development, staging, production (ordered). Object permissions live here."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=50)
    order = models.PositiveSmallIntegerField(default=0)
    locked = models.BooleanField(default=False)
    lock_reason = models.CharField(max_length=300, blank=True)
    # How deployments behave here: {"backup": true} takes a backup before database
    # migrations (SOP 6.2), {"maintenance": true} puts the application in maintenance
    # mode while they run.
    deploy_settings = models.JSONField(default=dict, blank=True)
    # Production: approving, deploying and rolling back here need a second factor
    # and a fresh second-factor check (SOP 10.2, identity.assurance).
    production = models.BooleanField(
        default=False, help_text="Decisions here need a second factor, checked recently.")
    # Deployment queue: a newer deployment of an application queued here supersedes
    # (cancels) the older ones still waiting, newest first (deployments.services).
    supersede_queued = models.BooleanField(
        default=False, help_text="A newer deployment of an application cancels its older "
                                 "ones still waiting in the queue here.")

    class Meta:
        db_table = "deployments_environment"
        ordering = ["order"]
        permissions = [
            ("request_change", "Can request a change to this environment"),
            ("deploy", "Can start deployments to this environment"),
            ("rollback", "Can roll back deployments in this environment"),
            ("approve_tech_lead", "Can decide the tech lead gate"),
            ("approve_qa", "Can decide the QA gate"),
            ("approve_cab", "Can decide the CAB gate"),
            ("approve_security", "Can decide the security gate"),
            ("approve_business", "Can decide the business gate"),
            ("approve_emergency", "Can decide the emergency gate"),
        ]

    def __str__(self) -> str:
        return self.name


class Target(models.Model):
    """Where an application runs in an environment (a host, a container group, a slot)."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="targets")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="targets")
    name = models.CharField(max_length=100)
    address = models.CharField(max_length=200, blank=True)

    class Meta:
        db_table = "deployments_target"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["application", "environment", "name"],
                                    name="target_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.application.slug}/{self.environment.slug}/{self.name}"


class HostKey(models.Model):
    """A pinned SSH host key of an environment: its known_hosts (SOP 10.1).

    The ``ssh`` executor connects to a target or bastion only when the key it offers is
    pinned here for that host in the deployment's environment; an unknown or changed
    key refuses the step. Keys are pinned and removed by administrators
    (``catalog.services.host_key_pin``), audited.
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="host_keys")
    # As known_hosts writes it: "web-1.example.com", or "[10.0.0.5]:2222" off port 22.
    host = models.CharField(max_length=255)
    key_type = models.CharField(max_length=40)
    key = models.TextField()  # base64, as in known_hosts
    fingerprint = models.CharField(max_length=80)  # SHA256:..., as ssh-keygen -l shows
    comment = models.CharField(max_length=200, blank=True)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="+")
    added_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["environment", "host", "key_type"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "host", "key_type", "key"],
                                    name="host_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.host} {self.key_type} {self.fingerprint}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.host} {self.key_type} {self.key}"


class MigrationKind(models.TextChoices):
    """How a database migration can be undone (SOP 6, DESIGN.md section 8)."""

    EXPAND = "expand", "Expand (old versions keep working)"
    CONTRACT = "contract", "Contract (removes what old versions used)"
    IRREVERSIBLE = "irreversible", "Irreversible (data cannot be restored by a rollback)"


class Release(models.Model):
    """An application at a version. Immutable once registered."""

    application = models.ForeignKey(Application, on_delete=models.PROTECT, related_name="releases")
    version = models.CharField(max_length=64, validators=[SEMVER])
    artifact_url = models.CharField(max_length=500, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True, validators=[SHA256])
    commit_sha = models.CharField(max_length=40, blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)
    checks = models.JSONField(default=dict, blank=True)  # {"tests": {"status": "passed", ...}}
    # Usernames of the people who wrote and merged the release's commits, reported by
    # CI; none of them may approve a change that ships it (DESIGN.md section 8).
    authors = models.JSONField(default=list, blank=True)
    mergers = models.JSONField(default=list, blank=True)
    # The database migrations this release runs, in order:
    # [{"name": "0042_add_gift_cards", "kind": "expand"}, ...] (MigrationKind).
    migration_plan = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        db_table = "deployments_release"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["application", "version"],
                                    name="release_unique_version"),
        ]
        permissions = [
            # CI's word on a release (tests green, scan clean, who wrote and merged it)
            # satisfies checklist items and blocks approvers: only CI accounts give it.
            ("report_ci", "Can report CI results, authors and mergers of releases"),
        ]

    def __str__(self) -> str:
        return f"{self.application.slug} {self.version}"
