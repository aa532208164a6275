"""Health analysis during a run (SOP 8.1): the baseline before anything changes, the
canary's verdict against it, and the automatic rollback a failed verdict starts."""

from __future__ import annotations

from deployments import health
from deployments import inputs as deployment_inputs
from deployments.models import AnalysisVerdict, Deployment
from deployments.services.rollback import _previous_success, _roll_back_automatically


def _analysis_settings(deployment: Deployment) -> dict:
    return deployment_inputs.executor_settings(deployment).get("analysis", {}) or {}


def _provider(deployment: Deployment):
    return health.provider_for(_analysis_settings(deployment), deployment)


def _record_baseline(deployment, step, executor, log) -> None:
    """Sample the running version before anything changes: the canary's yardstick."""
    if deployment.kind != Deployment.Kind.DEPLOY or not any(
            s.name == "analysis" for s in deployment.steps.all()):
        return
    if AnalysisVerdict.objects.filter(deployment=deployment,
                                      outcome=AnalysisVerdict.Outcome.BASELINE).exists():
        return
    targets = deployment_inputs.targets(deployment)
    provider = _provider(deployment)
    if isinstance(provider, health.PrometheusProvider):
        previous = _previous_success(deployment)
        if previous is None:
            return
        figures = provider.measure_version(previous.release.version, [t.name for t in targets])
    else:
        endpoints = {k: v for k, v in executor.endpoints(targets).items() if v}
        if not endpoints:
            log("info", "No running version to sample: analysis uses the SOP thresholds alone")
            return
        figures = provider.measure(endpoints)
    AnalysisVerdict.objects.create(
        deployment=deployment, step=step, phase="before deployment", provider=provider.name,
        outcome=AnalysisVerdict.Outcome.BASELINE, figures={"baseline": figures.as_dict()},
        reasons=[f"baseline: error rate {figures.error_rate}%, p95 {figures.p95_ms} ms over "
                 f"{figures.requests} requests"],
    )
    log("info", f"Baseline: error rate {figures.error_rate}%, p95 {figures.p95_ms} ms "
                f"({figures.requests} requests on {len(figures.targets)} target(s))")


def _analyse(deployment, step, steps, executor, log) -> str | None:
    """Compare targets on the new version with the baseline; None means carry on."""
    new_names = {s.target.name for s in steps
                 if s.target_id and s.position < step.position
                 and s.name in ("deploy", "switch")}
    targets = deployment_inputs.targets(deployment)
    canary = [t for t in targets if t.name in new_names]
    rest = [t for t in targets if t.name not in new_names]
    provider = _provider(deployment)
    thresholds = health.Thresholds.from_settings(_analysis_settings(deployment))
    if isinstance(provider, health.PrometheusProvider):
        canary_figures = provider.measure_version(deployment.release.version,
                                                  [t.name for t in canary])
        previous = _previous_success(deployment)
        baseline = (provider.measure_version(previous.release.version, [t.name for t in rest])
                    if previous and rest else None)
    else:
        canary_figures = provider.measure(executor.endpoints(canary))
        baseline = None
        live_rest = {k: v for k, v in executor.endpoints(rest).items() if v}
        if live_rest:
            baseline = provider.measure(live_rest)
    if baseline is None:
        recorded = AnalysisVerdict.objects.filter(
            deployment=deployment, outcome=AnalysisVerdict.Outcome.BASELINE).first()
        if recorded:
            baseline = health.Figures(**{k: v for k, v in recorded.figures["baseline"].items()
                                         if k != "error_rate"})
    verdict = health.evaluate(canary_figures, baseline, thresholds)
    outcome = (AnalysisVerdict.Outcome.PASSED if verdict.passed
               else AnalysisVerdict.Outcome.FAILED)
    action = "continued"
    if not verdict.passed:
        action = "reported" if deployment.dry_run else "rolled_back"
    record = AnalysisVerdict.objects.create(
        deployment=deployment, step=step, phase=step.phase, provider=provider.name,
        outcome=outcome, dry_run=deployment.dry_run, action=action, figures=verdict.figures,
        reasons=verdict.reasons,
    )
    summary = "; ".join(verdict.reasons)
    if verdict.passed:
        step.detail = f"passed: {summary}"
        return None
    if deployment.dry_run:
        log("warning", f"Dry run: SOP 8.1 criteria crossed, a real run would roll back now: "
                       f"{summary}")
        step.detail = f"failed (dry run, no action): {summary}"
        return None
    log("error", f"Analysis failed: {summary}")
    return _roll_back_automatically(deployment, step, f"analysis at {step.phase}: {summary}",
                                    log, verdict_id=record.pk)
