"""Command and webhook executors, SHA-256 checks, SOP 8.1 criteria, the Prometheus provider.

Deployments here run in the test process (deployment_run is the same code the worker
calls); the external systems are real HTTP servers on loopback.
"""

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments import health
from tests.factories import executor_app as _app
from tests.factories import run_deployment as _run

pytestmark = pytest.mark.django_db


@pytest.fixture
def server():
    """A loopback HTTP server answering from a function (method, path, body) -> dict."""
    started = []

    def start(answer):
        seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def _reply(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                seen.append((method, self.path, body, dict(self.headers)))
                payload = json.dumps(answer(method, self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802
                self._reply("GET")

            def do_POST(self):  # noqa: N802
                self._reply("POST")

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", seen

    yield start
    for httpd in started:
        httpd.shutdown()


def test_command_executor_streams_output_substitutes_values_and_exit_code_decides(
        demo, tmp_path):
    script = tmp_path / "deploy.py"
    script.write_text("import sys\nprint('deploying', *sys.argv[1:])\n"
                      "sys.exit(3 if '--fail' in sys.argv else 0)\n")
    app, env = _app("command", {"commands": {
        "deploy": f"{sys.executable} {script} --environment={{environment}} "
                  f"--version={{version}} --target={{target}}"}})

    deployment = _run(demo, app, env, "1.2.3")

    assert deployment.status == "succeeded", deployment.failure_reason
    lines = list(deployment.log_lines.values_list("message", flat=True))
    assert "deploying --environment=staging --version=1.2.3 --target=node-1" in lines
    assert any(line.startswith("$ ") and "deploy.py" in line for line in lines)

    app.executor_settings["commands"]["deploy"] += " --fail"
    app.save()
    failed = _run(demo, app, env, "1.2.4")
    assert failed.status == "failed"
    assert "exited with code 3" in failed.failure_reason


def test_command_executor_kills_a_command_past_its_timeout(demo):
    app, env = _app("command", {"timeout": 0.5,
                                "commands": {"stop": f"{sys.executable} -c "
                                                     "'import time; time.sleep(30)'"}})
    deployment = _run(demo, app, env)
    assert deployment.status == "failed"
    assert "timed out after 0.5 s" in deployment.failure_reason


def test_artifact_is_verified_against_its_sha256_before_the_command_sees_it(demo, tmp_path):
    artifact = tmp_path / "app.tar.gz"
    artifact.write_bytes(b"the build")
    app, env = _app("command", {"commands": {
        "deploy": f"{sys.executable} -c 'import sys; print(open(sys.argv[1]).read())' "
                  "{artifact}"}})
    good = _run(demo, app, env, "1.0.0", artifact_url=artifact.as_uri(),
                artifact_sha256=hashlib.sha256(b"the build").hexdigest())
    assert good.status == "succeeded"
    assert good.log_lines.filter(message="the build").exists()

    bad = _run(demo, app, env, "1.0.1", artifact_url=artifact.as_uri(),
               artifact_sha256=hashlib.sha256(b"tampered").hexdigest())
    assert bad.status == "failed"
    assert "artifact checksum mismatch" in bad.failure_reason
    assert not bad.log_lines.filter(message="the build").exists()


def test_webhook_executor_hands_each_step_over_and_polls_until_done(demo, server):
    polls = {}

    def answer(method, path, body):
        if method == "POST":
            polls[body["step_id"]] = 0
            return {"status": "running", "status_url": f"/status/{body['step_id']}"}
        step_id = path.rsplit("/", 1)[1]
        polls[step_id] += 1
        return {"status": "succeeded" if polls[step_id] >= 2 else "running",
                "detail": f"{step_id} ok"}

    url, seen = server(answer)
    app, env = _app("webhook", {"url": f"{url}/steps", "poll_interval": 0.01})

    deployment = _run(demo, app, env, "3.1.0")

    assert deployment.status == "succeeded", deployment.failure_reason
    posts = [s for s in seen if s[0] == "POST"]
    assert {p[2]["step"] for p in posts} >= {"pre_health_check", "deploy", "health_check"}
    deploy_post = next(p for p in posts if p[2]["step"] == "deploy")
    assert deploy_post[2]["version"] == "3.1.0" and deploy_post[2]["target"] == "node-1"
    assert deploy_post[3]["Idempotency-Key"] == deploy_post[2]["step_id"]
    assert all(n == 2 for n in polls.values())


def test_webhook_failure_fails_the_deployment_with_the_deployer_s_words(demo, server):
    url, _ = server(lambda method, path, body: {"status": "failed", "detail": "disk full"}
                    if body and body["step"] == "deploy" else {"status": "succeeded"})
    app, env = _app("webhook", {"url": url})
    deployment = _run(demo, app, env)
    assert deployment.status == "failed"
    assert "deploy failed on the deployer: disk full" in deployment.failure_reason


# --- SOP 8.1 criteria -----------------------------------------------------------


def figures(errors=0, requests=100, p95=10.0, failing=()):
    return health.Figures(targets=["a"], requests=requests, errors=errors, p95_ms=p95,
                          health_failures=list(failing))


def test_error_rate_more_than_one_point_above_baseline_fails():
    t = health.Thresholds()
    assert health.evaluate(figures(errors=2), figures(errors=1), t).passed
    verdict = health.evaluate(figures(errors=3), figures(errors=1), t)
    assert not verdict.passed
    assert verdict.reasons == ["error rate 3.0% is above 2.0% (baseline 1.0% + 1 point)"]
    assert verdict.figures["canary"]["error_rate"] == 3.0
    assert verdict.figures["baseline"]["error_rate"] == 1.0


def test_response_time_more_than_twenty_percent_slower_fails():
    t = health.Thresholds(latency_floor_ms=0)
    assert health.evaluate(figures(p95=119), figures(p95=100), t).passed
    verdict = health.evaluate(figures(p95=121), figures(p95=100), t)
    assert not verdict.passed and "more than 20% slower" in verdict.reasons[0]


def test_failing_health_check_fails_even_without_baseline():
    verdict = health.evaluate(figures(failing=["web-1"]), None, health.Thresholds())
    assert not verdict.passed
    assert verdict.reasons == ["health check failing on web-1"]


def test_prometheus_provider_reads_figures_from_instant_queries(server):
    def answer(method, path, body):
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(path).query)["query"][0]
        value = {"requests": "200", "errors": "9", "p95": "0.0"}[query.split("{")[0]]
        if query.startswith("p95"):
            value = "42.5" if 'version="2.0.0"' in query else "30"
        return {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"version": "x"}, "value": [1700000000.0, value]}]}}

    url, seen = server(answer)
    provider = health.PrometheusProvider(url, {
        "requests": 'requests{version="$version",instance=~"$targets"}',
        "errors": 'errors{version="$version"}',
        "p95_ms": 'p95{version="$version"}'})

    canary = provider.measure_version("2.0.0", ["web-1", "web-2"])

    assert (canary.requests, canary.errors, canary.error_rate, canary.p95_ms) == \
        (200, 9, 4.5, 42.5)
    assert seen[0][1].startswith("/api/v1/query?query=")
    assert "web-1%7Cweb-2" in seen[0][1]
    baseline = provider.measure_version("1.9.0", ["web-3"])
    verdict = health.evaluate(canary, baseline, health.Thresholds(latency_floor_ms=0))
    # Same error rate as the baseline (4.5%), but p95 42.5 ms against 30 ms.
    assert not verdict.passed
    assert verdict.reasons == ["p95 response time 42.5 ms is more than 20% slower than the "
                               "baseline's 30.0 ms"]


def test_prometheus_error_answer_is_reported(server):
    url, _ = server(lambda *a: {"status": "error", "error": "parse error"})
    provider = health.PrometheusProvider(url, {"requests": "bad("})
    with pytest.raises(ValueError, match="parse error"):
        provider.measure_version("1.0.0", ["a"])
