"""Fleet fixtures: an application on the demo fleet with N targets, and deploy helpers."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

import demo_fleet
from catalog.models import Application, Environment, Release, Target
from deployments import services
from deployments.models import Deployment
from tests.conftest import wait_for


class Fleet:
    """One application with its own targets in one environment, deployed by on-call."""

    def __init__(self, demo, tmp_path: Path, targets: int, environment: str, **app_settings):
        self.demo = demo
        self.tmp_path = tmp_path
        self.environment = Environment.objects.get(slug=environment)
        slug = f"shop-{uuid.uuid4().hex[:8]}"
        self.app = Application.objects.create(
            slug=slug, name=slug, executor="local",
            executor_settings={"fleet": "demo", "analysis": {"samples": 10},
                               **app_settings})
        self.targets = [Target.objects.create(application=self.app,
                                              environment=self.environment,
                                              name=f"web-{i}", address="127.0.0.1")
                        for i in range(1, targets + 1)]

    @property
    def base(self) -> Path:
        return Path(settings.PORTAL_DEPLOY_ROOT) / self.app.slug / self.environment.slug

    def release(self, version: str, *, bad: bool = False, migrations=None,
                behaviour: dict | None = None) -> Release:
        fields = {}
        behaviour = behaviour or ({"error_rate": 1.0} if bad else None)
        if behaviour:
            artifact = self.tmp_path / f"{self.app.slug}-{version}.json"
            artifact.write_text(json.dumps(behaviour))
            fields = {"artifact_url": f"file://{artifact}",
                      "artifact_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest()}
        return Release.objects.create(application=self.app, version=version,
                                      created_by=self.demo.engineer,
                                      migration_plan=migrations or [], **fields)

    def start(self, version, strategy="all_at_once", **kwargs) -> Deployment:
        release = version if isinstance(version, Release) else (
            Release.objects.filter(application=self.app, version=version).first()
            or self.release(version))
        with transaction.atomic():
            return services.deployment_create(actor=self.demo.oncall, release=release,
                                              environment=self.environment,
                                              strategy=strategy, **kwargs)

    def deploy(self, version, strategy="all_at_once", timeout=90, **kwargs) -> Deployment:
        deployment = self.start(version, strategy, **kwargs)
        return self.wait(deployment, timeout)

    def wait(self, deployment, timeout=90) -> Deployment:
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_final, timeout=timeout)
        deployment.refresh_from_db()
        return deployment

    def served_versions(self) -> dict[str, str]:
        """What each target answers on /health right now, over HTTP."""
        from deployments.executors.local import LocalExecutor

        deployment = Deployment.objects.filter(application=self.app).first()
        executor = LocalExecutor(deployment, lambda *a: None)
        answers = {}
        for name, endpoint in executor.endpoints(self.targets).items():
            if endpoint is None:
                answers[name] = None
                continue
            import urllib.request

            with urllib.request.urlopen(f"http://{endpoint[0]}:{endpoint[1]}/health",
                                        timeout=5) as response:
                answers[name] = json.load(response)["version"]
        return answers


@pytest.fixture
def fleet(demo, tmp_path):
    made = []

    def make(targets: int = 4, environment: str = "production", **app_settings) -> Fleet:
        f = Fleet(demo, tmp_path, targets, environment, **app_settings)
        made.append(f)
        return f

    yield make
    for f in made:
        demo_fleet.stop_all(f.base)
