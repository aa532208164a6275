"""SOP 10.1: artifacts only from trusted sources, each with its SHA-256, verified before use.

Registration is refused (400, the field named, nothing created, the attempt audited)
through the service, the API, the page and the push hook; the worker checks the
digest again and fails a tampered artifact before anything is switched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from approvals.models import ChangeRequest
from audit.models import AuditEvent
from catalog import services
from catalog.models import Application, Release
from core.errors import Invalid
from deployments.models import Deployment
from tests.deployments.conftest import fleet  # noqa: F401  (the demo fleet fixture)

CONTENT = b"storefront build 9"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def store(settings) -> Path:
    """The portal's artifact store as the only trusted source (the default)."""
    path = Path(settings.PORTAL_ARTIFACT_STORE)
    path.mkdir(parents=True, exist_ok=True)
    settings.PORTAL_ARTIFACT_SOURCES = [path.as_uri() + "/"]
    (path / "storefront-9.tgz").write_bytes(CONTENT)
    return path


def _outside_urls(store: Path, tmp_path: Path) -> list[str]:
    outside = tmp_path / "elsewhere.tgz"
    outside.write_bytes(CONTENT)
    (store / "escape-link.tgz").unlink(missing_ok=True)
    (store / "escape-link.tgz").symlink_to("/etc/passwd")
    (store / "escape-dir").unlink(missing_ok=True)
    (store / "escape-dir").symlink_to(tmp_path)
    return [
        "file:///etc/passwd",
        outside.as_uri(),
        f"file://{store}/../elsewhere.tgz",
        f"file://{store}/%2e%2e/elsewhere.tgz",
        f"file://{store}/escape-link.tgz",
        f"file://{store}/escape-dir/elsewhere.tgz",
        f"file://build-host{store}/storefront-9.tgz",
        f"file://{str(store).rstrip('/')}-evil/storefront-9.tgz",
        "http://127.0.0.1:8000/storefront-9.tgz",
        "http://169.254.169.254/latest/meta-data/",
        "https://artifacts.example.com/storefront-9.tgz",
        "ftp://artifacts.example.com/storefront-9.tgz",
        "storefront-9.tgz",
    ]


def _refused(before: int, version: str) -> None:
    assert not Release.objects.filter(version=version).exists()
    refusals = AuditEvent.objects.filter(action="release.refused")
    assert refusals.count() == before + 1
    assert refusals.order_by("-id").first().reason


@pytest.mark.django_db
def test_api_refuses_artifacts_outside_the_trusted_sources(demo, api, store, tmp_path):
    client = api(demo.engineer)
    for n, url in enumerate(_outside_urls(store, tmp_path)):
        before = AuditEvent.objects.filter(action="release.refused").count()
        version = f"9.0.{n}"
        answer = client.post("/api/v1/releases/", {
            "application": "storefront", "version": version, "artifact_url": url,
            "artifact_sha256": DIGEST}, format="json")
        assert answer.status_code == 400, (url, answer.json())
        assert list(answer.json()["fields"]) == ["artifact_url"], url
        assert answer.json()["code"] == "artifact_untrusted", url
        _refused(before, version)
    # Secrets in a URL do not reach the audit trail.
    assert not AuditEvent.objects.filter(reason__contains="passwd@").exists()


@pytest.mark.django_db
def test_an_artifact_without_its_sha256_is_refused(demo, api, store):
    before = AuditEvent.objects.filter(action="release.refused").count()
    answer = api(demo.engineer).post("/api/v1/releases/", {
        "application": "storefront", "version": "9.1.0",
        "artifact_url": f"{store.as_uri()}/storefront-9.tgz"}, format="json")
    assert answer.status_code == 400
    assert list(answer.json()["fields"]) == ["artifact_sha256"]
    assert answer.json()["code"] == "artifact_digest_missing"
    _refused(before, "9.1.0")


@pytest.mark.django_db
def test_an_artifact_in_the_store_with_its_sha256_is_registered(demo, api, store):
    answer = api(demo.engineer).post("/api/v1/releases/", {
        "application": "storefront", "version": "9.2.0",
        "artifact_url": f"{store.as_uri()}/storefront-9.tgz",
        "artifact_sha256": DIGEST}, format="json")
    assert answer.status_code == 201, answer.json()
    assert Release.objects.get(version="9.2.0").artifact_sha256 == DIGEST


@pytest.mark.django_db
def test_an_http_source_trusts_its_prefix_and_nothing_beside_it(demo, settings, store):
    settings.PORTAL_ARTIFACT_SOURCES = ["https://artifacts.example.com/builds/"]
    app = Application.objects.get(slug="storefront")
    release, created = services.release_register(
        actor=demo.engineer, application=app, version="9.3.0",
        artifact_url="https://artifacts.example.com/builds/storefront-9.tgz",
        artifact_sha256=DIGEST)
    assert created
    for n, url in enumerate([
            "https://artifacts.example.com/builds-evil/storefront-9.tgz",
            "https://artifacts.example.com/builds/../secrets/key",
            "https://artifacts.example.com/builds/%2E%2E/secrets/key",
            "https://artifacts.example.com.evil.net/builds/storefront-9.tgz",
            "https://artifacts.example.com:8443/builds/storefront-9.tgz",
            "http://artifacts.example.com/builds/storefront-9.tgz",
            "https://ci:passwd@artifacts.example.com/builds/storefront-9.tgz",
            f"{store.as_uri()}/storefront-9.tgz"]):
        before = AuditEvent.objects.filter(action="release.refused").count()
        with pytest.raises(Invalid) as refused:
            services.release_register(actor=demo.engineer, application=app,
                                      version=f"9.4.{n}", artifact_url=url,
                                      artifact_sha256=DIGEST)
        assert list(refused.value.fields) == ["artifact_url"], url
        _refused(before, f"9.4.{n}")
    assert not AuditEvent.objects.filter(reason__contains="passwd").exists()
    assert not AuditEvent.objects.filter(after__artifact_url__contains="passwd").exists()


@pytest.mark.django_db
def test_the_page_form_names_the_field_and_creates_nothing(demo, client, store):
    client.force_login(demo.engineer)
    response = client.post("/releases/new/", {
        "application": "storefront", "version": "9.5.0",
        "artifact_url": "file:///etc/passwd", "artifact_sha256": DIGEST})
    assert response.status_code == 400
    page = response.content.decode()
    error = page.split('id="id_artifact_url_error"', 1)[1].split("</p>", 1)[0]
    assert "not inside a trusted artifact source" in error
    assert not Release.objects.filter(version="9.5.0").exists()

    response = client.post("/releases/new/", {
        "application": "storefront", "version": "9.5.1",
        "artifact_url": f"{store.as_uri()}/storefront-9.tgz"})
    assert response.status_code == 400
    assert 'id="id_artifact_sha256_error"' in response.content.decode()
    assert not Release.objects.filter(version="9.5.1").exists()


@pytest.mark.django_db
def test_the_push_hook_refuses_an_untrusted_artifact_and_deploys_nothing(demo, api, store):
    answer = api(demo.ci).post("/api/v1/hooks/push", {
        "application": "storefront", "version": "9.6.0", "ref": "refs/heads/main",
        "artifact_url": "file:///etc/shadow", "artifact_sha256": DIGEST}, format="json")
    assert answer.status_code == 400
    assert list(answer.json()["fields"]) == ["artifact_url"]
    assert answer.json()["code"] == "artifact_untrusted"
    assert not Release.objects.filter(version="9.6.0").exists()
    assert not ChangeRequest.objects.filter(release__version="9.6.0").exists()
    assert not Deployment.objects.exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_tampered_artifact_fails_the_deployment_before_anything_is_switched(
        fleet, celery_worker_process):  # noqa: F811
    shop = fleet(targets=2, environment="staging")
    first = shop.deploy("1.0.0")
    assert first.status == "succeeded", first.failure_reason

    store = Path(django_settings.PORTAL_ARTIFACT_STORE)
    store.mkdir(parents=True, exist_ok=True)
    artifact = store / f"{shop.app.slug}-1.1.0.json"
    artifact.write_text('{"error_rate": 0}')
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    release, _ = services.release_register(actor=shop.demo.engineer, application=shop.app,
                                           version="1.1.0", artifact_url=artifact.as_uri(),
                                           artifact_sha256=digest)
    # Someone with write access to the store swaps the bytes after registration.
    artifact.write_text('{"error_rate": 1.0}')
    tampered = hashlib.sha256(artifact.read_bytes()).hexdigest()

    deployment = shop.deploy(release)

    assert deployment.status == "failed"
    assert "artifact checksum mismatch" in deployment.failure_reason
    log = "\n".join(deployment.log_lines.values_list("message", flat=True))
    assert artifact.name in log and artifact.as_uri() in log
    assert digest in log and tampered in log
    # Nothing was switched: every target still serves 1.0.0.
    assert shop.served_versions() == {t.name: "1.0.0" for t in shop.targets}
    assert os.readlink(shop.base / "current") == "releases/1.0.0"
    assert not (shop.base / "releases" / "1.1.0").exists()
