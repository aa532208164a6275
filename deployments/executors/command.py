"""The `command` executor: a configured command per step (SOP 4.1 phase 2).

Executor settings::

    {"commands": {"deploy": "./deploy.sh --environment={environment} --version={version}",
                  "health_check": "./health-check.sh {target}"},
     "cwd": "/opt/deploy", "timeout": 600, "env": {"DEPLOY_USER": "svc"}}

Placeholders: {application}, {environment}, {version}, {target}, {address},
{artifact} (the verified local copy of the artifact), {deployment}. A step without a
command is recorded as such and succeeds. Output is streamed into the deployment log
line by line; the exit code decides; a command past its timeout is killed. The command
sees only PATH, HOME, LANG and the like of the worker's environment
(``passthrough_environment``), its "env" settings, PORTAL_CONFIGURATION (the resolved
configuration), PORTAL_VERSION and PORTAL_ENVIRONMENT.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from core import logcontext
from deployments.executors.base import (
    Executor,
    StepFailed,
    fetch_artifact,
    passthrough_environment,
)


class CommandExecutor(Executor):
    def _artifact(self) -> str:
        if not self.deployment.release.artifact_url:
            return ""
        into = self.base / "artifacts" / self.deployment.release.version
        into.mkdir(parents=True, exist_ok=True)
        path = fetch_artifact(self.deployment.release, into, self.log)
        return str(path or "")

    def run(self, step) -> str:
        if step.name == "pre_health_check":
            # SOP 10.1: the artifact is verified before any command stops anything.
            self._artifact()
        if step.name not in self.settings.get("commands", {}):
            return f"no command configured for {step.name}"
        return super().run(step)

    def __getattr__(self, name: str):
        if name.startswith("step_") and name[5:] in self.settings.get("commands", {}):
            return lambda target=None: self._run_command(name[5:], target)
        raise AttributeError(name)

    def _run_command(self, step_name: str, target) -> str:
        d = self.deployment
        values = {
            "application": d.application.slug, "environment": d.environment.slug,
            "version": d.release.version, "deployment": str(d.pk),
            "target": target.name if target else "", "address": target.address if target else "",
            "artifact": self._artifact() if step_name in ("deploy", "deploy_idle") else "",
        }
        template = self.settings["commands"][step_name]
        try:
            argv = [part.format(**values) for part in shlex.split(template)]
        except (KeyError, ValueError) as exc:
            raise StepFailed(f"the command for {step_name} is malformed: {exc}") from exc
        timeout = float(self.settings.get("timeout", 600))
        # Not the worker's environment: no DJANGO_SECRET_KEY, DATABASE_URL, hook secrets.
        env = dict(passthrough_environment(),
                   **{k: str(v) for k, v in self.settings.get("env", {}).items()},
                   **self.configuration_environment(),
                   PORTAL_VERSION=d.release.version, PORTAL_ENVIRONMENT=d.environment.slug)
        cwd = self.settings.get("cwd") or None
        if cwd:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        self.log("info", "$ " + shlex.join(argv))
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
        except OSError as exc:
            raise StepFailed(f"could not run {argv[0]}: {exc}") from exc
        timed_out = threading.Event()

        def kill_after_timeout() -> None:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out.set()
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.1)

        # Started with the run's context, so what it logs carries the deployment's id.
        threading.Thread(target=logcontext.carried(kill_after_timeout), daemon=True).start()
        last = ""
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line:
                last = line
                self.log("info", line[:2000])
        code = proc.wait()
        if timed_out.is_set():
            raise StepFailed(f"{step_name} timed out after {timeout:g} s")
        if code != 0:
            raise StepFailed(f"{step_name} exited with code {code}" + (f": {last}" if last else ""))
        return last[:500] or f"{step_name} done"
