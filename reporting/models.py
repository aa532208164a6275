"""Daily roll-ups of the deployments that ended, so the DORA figures over months read
a few rows per application and environment and day instead of every deployment
(docs/metrics.md, "Daily roll-ups")."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models


class DeploymentDay(models.Model):
    """The deployments of one application in one environment that ended on one day
    (``PORTAL_TIME_ZONE``), counted as ``reporting.metrics`` counts them.

    Derived data: ``reporting.rollups`` writes it in the transaction that ends a
    deployment and rebuilds it from the deployments at will
    (``manage.py rebuild_deployment_rollups``); nobody edits it.
    """

    day = models.DateField()
    application = models.ForeignKey("catalog.Application", on_delete=models.CASCADE,
                                    related_name="+")
    environment = models.ForeignKey("catalog.Environment", on_delete=models.CASCADE,
                                    related_name="+")
    deployments = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    # Lead times (seconds) of the completed deployments, sorted: the median over any
    # set of days is exact (percentile_cont over the merged arrays).
    lead_seconds = ArrayField(models.FloatField(), default=list)
    # Failures of the day whose service was restored, and the sum of their times to
    # restore (exact: EXTRACT(EPOCH ...) is numeric).
    restored = models.PositiveIntegerField(default=0)
    restore_seconds = models.DecimalField(max_digits=24, decimal_places=6, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["application", "environment", "day"],
                                    name="deploymentday_one_per_cell_day"),
        ]
        indexes = [
            models.Index(fields=["environment", "day"], name="deploymentday_env_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} app {self.application_id} env {self.environment_id}"
