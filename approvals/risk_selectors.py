"""Reads for the risk score (docs/cab.md): the facts around many changes at once,
and the changes' current (latest) assessments.

The change failure rate is the DORA figure of ``reporting.metrics``; the approval
workflow may not import reporting (it stands above approvals), so both read the
counting rule from the engine's selectors (``deployments.selectors``), the app that
owns deployments.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.db.models import Prefetch, QuerySet

from approvals import risk, schedule
from approvals.models import GateRole, MaintenanceWindow, RiskAssessment
from core import clock
from deployments import selectors as deployment_selectors
from deployments.inputs import inputs_of_many


def risk_facts(changes, *, at=None) -> dict[int, risk.RiskFacts]:
    """{change id: RiskFacts} for ``changes`` (release and environment loaded): one query
    per kind of fact (targets, failure counts, rollbacks, windows), whatever their number."""
    changes = list(changes)
    if not changes:
        return {}
    at = at or clock.now()
    pairs = {(c.release.application, c.environment) for c in changes}
    inputs = inputs_of_many(pairs)
    keys = {(c.release.application_id, c.environment_id) for c in changes}
    failures = deployment_selectors.change_failure_counts(
        {a for a, _ in keys}, since=at - timedelta(days=risk.FAILURE_DAYS), until=at)
    rollbacks = deployment_selectors.rollback_counts(
        keys, since=at - timedelta(days=risk.ROLLBACK_DAYS))
    windows: dict[int, list[MaintenanceWindow]] = defaultdict(list)
    for window in MaintenanceWindow.objects.filter(environment_id__in={e for _, e in keys}):
        windows[window.environment_id].append(window)
    facts = {}
    for change in changes:
        key = (change.release.application_id, change.environment_id)
        run = inputs[key]
        settings = run.get("executor_settings") or {}
        try:
            batch = int(settings.get("batch_size", 1))
        except (TypeError, ValueError):
            batch = 1
        env_windows = windows.get(change.environment_id, [])
        deployments, failed = failures.get(key[0], (0, 0))
        facts[change.pk] = risk.RiskFacts(
            targets=len(run["targets"]), batch_size=batch,
            deployments=deployments, failures=failed, rollbacks=rollbacks.get(key, 0),
            windows=len(env_windows),
            in_window=bool(change.scheduled_for and schedule.current_window(
                env_windows, change.scheduled_for)))
    return facts


def _latest_first() -> QuerySet[RiskAssessment]:
    # One row per change (PostgreSQL's DISTINCT ON over risk_latest_idx).
    return (RiskAssessment.objects.order_by("change_id", "-created_at", "-id")
            .distinct("change_id"))


def with_latest_risk(queryset: QuerySet) -> QuerySet:
    """Changes with ``latest_risk`` (a list of at most one assessment) prefetched: one
    query for a whole page of changes."""
    return queryset.prefetch_related(
        Prefetch("risk_assessments", queryset=_latest_first(), to_attr="latest_risk"))


def latest_risk(change) -> RiskAssessment | None:
    """The change's current assessment, from the prefetch when there is one."""
    found = getattr(change, "latest_risk", None)
    if found is not None:
        return found[0] if found else None
    return change.risk_assessments.order_by("-created_at", "-id").first()


def latest_risk_for_many(changes) -> dict[int, RiskAssessment]:
    """{change id: its current assessment} in one query."""
    ids = {c.pk for c in changes}
    return {a.change_id: a for a in _latest_first().filter(change_id__in=ids)} if ids else {}


def assessments_of(change) -> list[RiskAssessment]:
    """Every assessment of ``change``, newest first (the change page)."""
    return list(change.risk_assessments.all())


def risk_summary(change) -> dict:
    """What the change page shows of the risk: the current assessment, its band, and
    why a gate was added at submission ("risk 78 ≥ 70: Security gate added"). One query."""
    assessments = assessments_of(change)
    current = assessments[0] if assessments else None
    added = next((a for a in assessments if a.added_gate), None)
    note = (f"risk {added.score} ≥ {added.threshold}: {GateRole(added.added_gate).label} "
            "gate added") if added else ""
    return {"risk_assessment": current,
            "risk_band": risk.band(current.score) if current else None,
            "risk_gate_note": note}
