"""The rows of ``GET /api/v1/deployments/`` built from ``values()`` (three queries a
page: the deployments, their steps, their verdicts) instead of model instances through
``DeploymentSerializer``'s fields, which cost most of the list's time at 50 rows with
their steps. The body is the serializer's, field for field (``DeploymentSerializer``
stays the contract in the OpenAPI schema; tests/deployments/test_api_rows.py compares
both on every kind of deployment).
"""

from __future__ import annotations

from collections import defaultdict

from rest_framework import serializers

from deployments import selectors
from deployments.models import AnalysisVerdict, Deployment, DeploymentStep

# The same text DRF's DateTimeField writes (the current time zone, "Z" for UTC).
_datetime = serializers.DateTimeField().to_representation

# What a page of the list reads of each deployment.
ROW_FIELDS = ("id", "application__slug", "environment__slug", "release_id", "release__version",
              "change_id", "kind", "rolled_back_deployment_id", "dry_run", "strategy",
              "status", "progress", "created_at", "started_at", "finished_at",
              "failure_reason", "holds_target", "application_id", "environment_id")
STEP_FIELDS = ("deployment_id", "position", "name", "title", "target__name", "phase",
               "status", "attempts", "started_at", "finished_at", "detail")
VERDICT_FIELDS = ("deployment_id", "phase", "provider", "outcome", "dry_run", "action",
                  "figures", "reasons", "created_at")


def _when(value):
    return _datetime(value) if value is not None else None


def _text(value):
    return str(value) if value is not None else None


def _queue(row: dict) -> dict:
    if row["status"] != Deployment.Status.QUEUED or row["holds_target"]:
        return {"position": None, "waiting_for": None}
    waiting = Deployment(id=row["id"], application_id=row["application_id"],
                         environment_id=row["environment_id"], status=row["status"],
                         holds_target=row["holds_target"], created_at=row["created_at"])
    return selectors.queue_state(waiting)


def deployment_rows(page: list[dict]) -> list[dict]:
    """The list's JSON rows for ``page`` (rows of ``ROW_FIELDS``, in page order)."""
    ids = [row["id"] for row in page]
    steps: dict[int, list[dict]] = defaultdict(list)
    verdicts: dict[int, list[dict]] = defaultdict(list)
    if ids:
        for s in (DeploymentStep.objects.filter(deployment_id__in=ids)
                  .order_by("deployment", "position").values(*STEP_FIELDS)):
            steps[s["deployment_id"]].append({
                "position": s["position"], "name": _text(s["name"]), "title": _text(s["title"]),
                "target": _text(s["target__name"]), "phase": _text(s["phase"]),
                "status": _text(s["status"]), "attempts": s["attempts"],
                "started_at": _when(s["started_at"]), "finished_at": _when(s["finished_at"]),
                "detail": _text(s["detail"])})
        for v in (AnalysisVerdict.objects.filter(deployment_id__in=ids)
                  .order_by("deployment", "created_at", "id").values(*VERDICT_FIELDS)):
            verdicts[v["deployment_id"]].append({
                "phase": _text(v["phase"]), "provider": _text(v["provider"]),
                "outcome": _text(v["outcome"]), "dry_run": v["dry_run"],
                "action": _text(v["action"]), "figures": v["figures"],
                "reasons": v["reasons"], "created_at": _when(v["created_at"])})
    body = []
    for row in page:
        started, finished = row["started_at"], row["finished_at"]
        queue = _queue(row)
        body.append({
            "id": row["id"], "application": row["application__slug"],
            "environment": row["environment__slug"], "release": row["release_id"],
            "version": _text(row["release__version"]), "change": row["change_id"],
            "kind": _text(row["kind"]), "rolled_back_deployment": row["rolled_back_deployment_id"],
            "dry_run": row["dry_run"], "strategy": _text(row["strategy"]),
            "status": _text(row["status"]), "progress": row["progress"],
            "created_at": _when(row["created_at"]), "started_at": _when(started),
            "finished_at": _when(finished),
            "duration_seconds": ((finished - started).total_seconds()
                                 if started and finished else None),
            "failure_reason": _text(row["failure_reason"]),
            "steps": steps.get(row["id"], []), "verdicts": verdicts.get(row["id"], []),
            "queue_position": queue["position"], "waiting_for": queue["waiting_for"],
        })
    return body
