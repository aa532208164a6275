"""Health analysis: sample targets, compare the new version with the baseline, decide.

SOP 8.1 rollback criteria, applied to the figures the providers collect:

- error rate more than 1 percentage point above the baseline's;
- response time (p95) more than 20% slower than the baseline's;
- a health check failing.

Every verdict carries the figures and thresholds it was based on and a sentence per
criterion, so nobody has to guess why a deployment was rolled back.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from dataclasses import asdict, dataclass, field

from core import outbound

# SOP 8.1 thresholds.
ERROR_RATE_POINTS = 1.0
LATENCY_RATIO = 1.2
# Loopback answers take about a millisecond, where 20% is scheduling noise on a busy
# host: the latency criterion also needs the p95 to be this many milliseconds slower.
LATENCY_FLOOR_MS = 25.0
# Requests sent to each target before sampling and not counted: a freshly started
# instance's first answers are slow for reasons no user would see twice.
WARM_UP_REQUESTS = 2


@dataclass
class Figures:
    """What a provider measured on a group of targets."""

    targets: list[str] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    health_failures: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        """Percent of requests that failed."""
        return round(100.0 * self.errors / self.requests, 2) if self.requests else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


@dataclass
class Thresholds:
    error_rate_points: float = ERROR_RATE_POINTS
    latency_ratio: float = LATENCY_RATIO
    latency_floor_ms: float = LATENCY_FLOOR_MS

    @classmethod
    def from_settings(cls, settings: dict) -> Thresholds:
        known = {k: float(v) for k, v in (settings or {}).items() if k in cls.__annotations__}
        return cls(**known)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    figures: dict


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return round(ordered[rank], 2)


def evaluate(canary: Figures, baseline: Figures | None, thresholds: Thresholds) -> Verdict:
    """Apply the SOP 8.1 criteria; each one contributes a sentence either way."""
    failed: list[str] = []
    fine: list[str] = []
    if canary.health_failures:
        failed.append("health check failing on " + ", ".join(canary.health_failures))
    else:
        fine.append(f"health checks pass on {len(canary.targets)} target(s)")

    base_rate = baseline.error_rate if baseline and baseline.requests else 0.0
    limit = round(base_rate + thresholds.error_rate_points, 2)
    if canary.requests and canary.error_rate > limit:
        failed.append(f"error rate {canary.error_rate}% is above {limit}% "
                      f"(baseline {base_rate}% + {thresholds.error_rate_points:g} point)")
    elif canary.requests:
        fine.append(f"error rate {canary.error_rate}% is within {limit}%")

    if baseline and baseline.p95_ms is not None and canary.p95_ms is not None:
        slower = canary.p95_ms - baseline.p95_ms
        limit_ms = round(baseline.p95_ms * thresholds.latency_ratio, 2)
        if canary.p95_ms > limit_ms and slower > thresholds.latency_floor_ms:
            failed.append(f"p95 response time {canary.p95_ms} ms is more than "
                          f"{(thresholds.latency_ratio - 1) * 100:.0f}% slower than the "
                          f"baseline's {baseline.p95_ms} ms")
        else:
            fine.append(f"p95 response time {canary.p95_ms} ms against baseline "
                        f"{baseline.p95_ms} ms")
    figures = {
        "canary": canary.as_dict(),
        "baseline": baseline.as_dict() if baseline else None,
        "thresholds": asdict(thresholds),
    }
    return Verdict(passed=not failed, reasons=failed or fine, figures=figures)


# --- providers -----------------------------------------------------------------


def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, float]:
    """(status, milliseconds); status 0 when the target did not answer.

    The call goes through ``core.outbound``: a target at an address the portal may
    not call raises ``outbound.DestinationRefused``.
    """
    started = time.perf_counter()
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        status = outbound.request("GET", f"http://{netloc}{path}", connect_timeout=timeout,
                                  read_timeout=timeout, total_timeout=timeout * 2).status
    except (outbound.Unreachable, outbound.ResponseTooLarge):
        status = 0
    return status, round((time.perf_counter() - started) * 1000, 2)


class HttpProber:
    """Samples each target's page and its /health over HTTP."""

    name = "http"

    def __init__(self, samples: int = 20, path: str = "/", health_path: str = "/health",
                 timeout: float = 2.0) -> None:
        self.samples = samples
        self.path = path
        self.health_path = health_path
        self.timeout = timeout

    def health(self, endpoint: tuple[str, int] | None) -> tuple[bool, str]:
        if endpoint is None:
            return False, "not running"
        try:
            status, _ = _get(*endpoint, self.health_path, self.timeout)
        except outbound.DestinationRefused as exc:
            return False, f"not probed: {exc}"
        return status == 200, f"/health answered {status or 'nothing'}"

    def measure(self, endpoints: dict[str, tuple[str, int] | None]) -> Figures:
        figures = Figures(targets=sorted(endpoints))
        latencies: list[float] = []
        for name in sorted(endpoints):
            endpoint = endpoints[name]
            healthy, _ = self.health(endpoint)
            if not healthy:
                figures.health_failures.append(name)
            if endpoint is None or not healthy and _refused(endpoint):
                continue
            for _ in range(WARM_UP_REQUESTS):
                _get(*endpoint, self.path, self.timeout)
            for _ in range(self.samples):
                status, ms = _get(*endpoint, self.path, self.timeout)
                figures.requests += 1
                if status == 0 or status >= 500:
                    figures.errors += 1
                else:
                    latencies.append(ms)
        figures.p50_ms = percentile(latencies, 50)
        figures.p95_ms = percentile(latencies, 95)
        figures.p99_ms = percentile(latencies, 99)
        return figures


def _refused(endpoint: tuple[str, int]) -> bool:
    """Whether the portal may not call this endpoint at all (nothing to sample there)."""
    host, port = endpoint
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        outbound.check_url(f"http://{netloc}/", resolve=False)
    except outbound.DestinationRefused:
        return True
    return False


class PrometheusProvider:
    """Reads the same figures from Prometheus instant queries (HTTP API v1).

    Settings: ``{"url": "http://prometheus:9090", "requests": "...", "errors": "...",
    "p95_ms": "...", "health_failures": "..."}``, each a PromQL expression in which
    ``$version`` and ``$targets`` (a regex of target names) are substituted.
    """

    name = "prometheus"

    def __init__(self, url: str, queries: dict[str, str], timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.queries = queries
        self.timeout = timeout

    def query(self, expression: str) -> list[dict]:
        params = urllib.parse.urlencode({"query": expression})
        try:
            answer = outbound.request("GET", f"{self.url}/api/v1/query?{params}",
                                      connect_timeout=self.timeout, read_timeout=self.timeout)
            payload = answer.json()
        except outbound.OutboundError as exc:
            raise ValueError(f"Prometheus could not be queried: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError(f"Prometheus answered HTTP {answer.status} without a result")
        if payload.get("status") != "success":
            raise ValueError(f"Prometheus answered {payload.get('error', payload)}")
        return payload["data"]["result"]

    def _scalar(self, key: str, version: str, targets: list[str]) -> float | None:
        expression = self.queries.get(key)
        if not expression:
            return None
        expression = (expression.replace("$version", version)
                      .replace("$targets", "|".join(targets)))
        total = None
        for sample in self.query(expression):
            value = float(sample["value"][1])
            if not math.isnan(value):
                total = (total or 0.0) + value
        return total

    def measure_version(self, version: str, targets: list[str]) -> Figures:
        requests = self._scalar("requests", version, targets) or 0.0
        errors = self._scalar("errors", version, targets) or 0.0
        p95 = self._scalar("p95_ms", version, targets)
        unhealthy = self._scalar("health_failures", version, targets) or 0.0
        return Figures(
            targets=sorted(targets), requests=int(round(requests)), errors=int(round(errors)),
            p95_ms=round(p95, 2) if p95 is not None else None,
            health_failures=[f"{int(unhealthy)} target(s) reported down"] if unhealthy else [],
        )


# --- providers by name ----------------------------------------------------------------
#
# An environment's analysis settings name a provider (``"provider": "prometheus"``;
# without a name, the HTTP prober). A provider is built from those settings by a
# factory registered here; another app adds one with ``register_health_provider`` from
# its ``AppConfig.ready`` rather than by patching the engine. A factory is given the
# deployment being analysed too.


def _http_prober(conf: dict, deployment=None) -> HttpProber:
    return HttpProber(samples=int(conf.get("samples", 20)))


def _prometheus(conf: dict, deployment=None) -> PrometheusProvider:
    return PrometheusProvider(conf["prometheus"]["url"], conf["prometheus"].get("queries", {}))


HEALTH_PROVIDERS: dict = {"http": _http_prober, "prometheus": _prometheus}


def register_health_provider(name: str, factory):
    """Build providers named ``name`` with ``factory(analysis_settings, deployment)`` (the
    deployment being analysed); returns the factory it replaces (None for a new name)."""
    previous = HEALTH_PROVIDERS.get(name)
    HEALTH_PROVIDERS[name] = factory
    return previous


def unregister_health_provider(name: str, previous=None) -> None:
    """Undo ``register_health_provider``: put ``previous`` back, or forget ``name``."""
    if previous is None:
        HEALTH_PROVIDERS.pop(name, None)
    else:
        HEALTH_PROVIDERS[name] = previous


def provider_for(conf: dict, deployment=None):
    """The provider an environment's analysis settings ask for, for ``deployment``."""
    name = conf.get("provider") or "http"
    try:
        factory = HEALTH_PROVIDERS[name]
    except KeyError:
        raise ValueError(f"no health provider named {name!r}") from None
    return factory(conf, deployment)
