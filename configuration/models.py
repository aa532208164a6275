"""Versioned configuration per application and environment (SOP 7.1, 7.2).

Every save is a new version with who and why. Values under secret-looking keys are
references (``${env:NAME}``, ``vault:path#key``), resolved only on the worker at
deployment time; resolved values are never stored.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Application, Environment
from core import clock


class ConfigurationSchema(models.Model):
    """The JSON Schema an application declares for its configuration documents."""

    application = models.OneToOneField(Application, on_delete=models.CASCADE,
                                       related_name="configuration_schema")
    schema = models.JSONField(default=dict)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="+")
    updated_at = models.DateTimeField(default=clock.now)

    def __str__(self) -> str:
        return f"Configuration schema of {self.application.slug}"


class ConfigurationVersion(models.Model):
    application = models.ForeignKey(Application, on_delete=models.PROTECT,
                                    related_name="configuration_versions")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT,
                                    related_name="configuration_versions")
    number = models.PositiveIntegerField()
    document = models.TextField(help_text="The YAML as written.")
    data = models.JSONField(default=dict, help_text="The parsed document (references as text).")
    digest = models.CharField(max_length=64)
    secret_references = models.JSONField(default=list, blank=True)
    secret_references_digest = models.CharField(max_length=64)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                               related_name="+")
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["application", "environment", "-number"]
        constraints = [
            # Two saves at once cannot both become version N.
            models.UniqueConstraint(fields=["application", "environment", "number"],
                                    name="configuration_unique_version"),
        ]

    def __str__(self) -> str:
        return f"{self.application.slug}/{self.environment.slug} v{self.number}"


class SecretAllowance(models.Model):
    """One entry of an application's secret allow-list in one environment (SOP 7.2).

    Besides its own namespace (``secret/<environment>/<application>/`` in Vault,
    ``<ENVIRONMENT>_<APPLICATION>_*`` variables) a configuration may name what these
    entries allow. The deny-list (``configuration.secret_policy``) wins over them.
    """

    class Kind(models.TextChoices):
        VAULT = "vault", "Vault path (a trailing / allows everything below)"
        ENV = "env", "Environment variable (a trailing * makes a prefix)"

    application = models.ForeignKey(Application, on_delete=models.CASCADE,
                                    related_name="secret_allowances")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE,
                                    related_name="secret_allowances")
    kind = models.CharField(max_length=5, choices=Kind.choices)
    value = models.CharField(max_length=300)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["application", "environment", "kind", "value"]
        constraints = [
            models.UniqueConstraint(fields=["application", "environment", "kind", "value"],
                                    name="secret_allowance_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.application.slug}/{self.environment.slug}: {self.kind} {self.value}"
