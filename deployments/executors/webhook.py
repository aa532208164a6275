"""The `webhook` executor: hands each step to an external system and polls its status.

Executor settings::

    {"url": "https://deployer.example.com/steps", "token": "...", "poll_interval": 2,
     "timeout": 900}

Each step is POSTed as JSON (application, environment, version, artifact URL and
SHA-256, step name, target, and ``step_id`` which doubles as ``Idempotency-Key``, so a
resumed step is not started twice on the other side). The answer is
``{"status": "succeeded" | "failed" | "running", "status_url"?, "detail"?}``; while it
is running the executor polls ``status_url`` until it ends or the timeout passes.

Every request carries the portal's signed deploy statement (``X-Deploy-Statement``,
``deployments.statements``): the deployer can check, with the portal's public key, that
what it is asked to run was approved, for this environment and this artifact digest.
"""

from __future__ import annotations

import json
import time
import urllib.parse

from core import outbound
from deployments import statements
from deployments.executors.base import Executor, StepFailed

STEPS = ("pre_health_check", "backup", "backup_database", "maintenance_on", "migrate",
         "verify_migrations", "maintenance_off", "stop", "deploy", "start", "health_check",
         "deploy_idle", "health_check_idle", "switch", "finalize")


class WebhookExecutor(Executor):
    # Each step is sent with a stable Idempotency-Key: the deployer applies it once.
    steps_safe_to_repeat = True

    _wire: dict | None = None

    def _statement(self) -> str:
        # One per run: signed once, sent with every step of it.
        if self._wire is None:
            self._wire = statements.statement_sign(self.deployment)
        return statements.statement_header(self._wire)

    def _request(self, url: str, body: dict | None, key: str) -> dict:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   statements.HEADER: self._statement()}
        if self.settings.get("token"):
            headers["Authorization"] = f"Bearer {self.settings['token']}"
        data = json.dumps(body).encode() if body is not None else None
        try:
            answer = outbound.request("POST" if data else "GET", url, body=data,
                                      headers=headers, read_timeout=30)
        except outbound.DestinationRefused as exc:
            raise StepFailed(f"the deployer at {url} may not be called: {exc}") from None
        except outbound.OutboundError as exc:
            raise StepFailed(f"the deployer at {url} could not be reached: {exc}") from None
        if answer.status >= 400:
            raise StepFailed(f"the deployer answered HTTP {answer.status} for {url}")
        try:
            return answer.json()
        except ValueError as exc:
            raise StepFailed(f"the deployer at {url} answered no JSON: {exc}") from None

    def __getattr__(self, name: str):
        if name.startswith("step_") and name[5:] in STEPS:
            return lambda target=None: self._hand_over(name[5:], target)
        raise AttributeError(name)

    def _hand_over(self, step_name: str, target) -> str:
        d = self.deployment
        url = self.settings.get("url")
        if not url:
            raise StepFailed("the webhook executor has no url configured")
        step_id = f"deployment-{d.pk}-{step_name}-{target.name if target else 'all'}"
        answer = self._request(url, {
            "step_id": step_id, "step": step_name, "deployment": d.pk,
            "application": d.application.slug, "environment": d.environment.slug,
            "version": d.release.version, "artifact_url": d.release.artifact_url,
            "artifact_sha256": d.release.artifact_sha256,
            "target": target.name if target else None,
        }, step_id)
        deadline = time.monotonic() + float(self.settings.get("timeout", 900))
        interval = float(self.settings.get("poll_interval", 2))
        status_url = ""
        while answer.get("status") in ("running", "queued", "accepted"):
            if time.monotonic() > deadline:
                raise StepFailed(f"{step_name} did not finish on the deployer in time")
            status_url = urllib.parse.urljoin(url, answer.get("status_url") or status_url)
            if not status_url:
                raise StepFailed("the deployer said running but gave no status_url")
            time.sleep(interval)
            answer = self._request(status_url, None, step_id)
        detail = str(answer.get("detail", ""))[:500]
        if answer.get("status") != "succeeded":
            raise StepFailed(f"{step_name} {answer.get('status', 'failed')} on the deployer"
                             + (f": {detail}" if detail else ""))
        return detail or f"{step_name} done by the deployer"
