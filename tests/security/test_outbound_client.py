"""One guarded client for every outbound call (core.outbound).

The servers are real HTTP servers on loopback, started here. Loopback is what the
guard refuses by default, so each test empties or sets ``PORTAL_OUTBOUND_ALLOW``
itself; a refused call must not reach the server at all.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audit.models import AuditEvent
from catalog.models import Application, Release, Target
from core import outbound
from core.errors import Invalid
from deployments import health
from deployments.executors.base import StepFailed, fetch_artifact
from notifications import services as notification_services
from notifications.models import Notification, Subscription
from tests.factories import executor_app, run_deployment

BIG = 2 * 1024 * 1024


class Server:
    """A loopback server; ``seen`` lists every request path it received."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append(self.path)
                port = self.server.server_address[1]
                path = self.path.split("?")[0]
                if path == "/redirect-other":
                    self._send(302, b"", location=f"http://localhost:{port}/ok")
                elif path == "/redirect-same":
                    self._send(302, b"", location="/ok")
                elif path == "/big":
                    self._send(200, b"x" * BIG)
                elif path == "/big-undeclared":
                    self.protocol_version = "HTTP/1.0"
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"y" * BIG)
                elif path == "/slow":
                    time.sleep(3)
                    self._send(200, b"late")
                elif path == "/artifact.tgz":
                    self._send(200, b"the build")
                else:
                    self._send(200, b'{"status": "success", "data": {"result": []}}')

            def _send(self, status, body, location=None):
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                return  # a client that hung up on purpose (timeouts, size caps)

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def no_allow_list(settings):
    settings.PORTAL_OUTBOUND_ALLOW = []
    return settings


# --- the address rule -------------------------------------------------------------------


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:{port}/ok", "loopback"),
    ("http://[::1]:{port}/ok", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/ok", "loopback"),
    ("http://localhost:{port}/ok", "this machine"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "private"),
    ("http://169.254.10.10/", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0:{port}/ok", "reserved"),
    ("http://240.0.0.1/", "reserved"),
    ("ftp://example.com/x", "only http and https"),
])
def test_non_public_destinations_are_refused_without_the_allow_list(server, no_allow_list,
                                                                    url, why):
    with pytest.raises(outbound.DestinationRefused, match=why):
        outbound.request("GET", url.format(port=server.port), connect_timeout=1,
                         read_timeout=1)
    assert server.seen == []


def test_the_allow_list_lets_a_named_address_or_block_through(server, settings):
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    assert outbound.request("GET", f"{server.url}/ok").status == 200
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.0/8"]
    assert outbound.request("GET", f"{server.url}/ok").json()["status"] == "success"
    settings.PORTAL_OUTBOUND_ALLOW = ["localhost"]
    assert outbound.request("GET", f"http://localhost:{server.port}/ok").status == 200
    assert server.seen == ["/ok", "/ok", "/ok"]


def test_a_metadata_address_needs_naming_one_by_one_not_a_wider_block(settings):
    settings.PORTAL_OUTBOUND_ALLOW = ["169.254.0.0/16", "fd00::/8"]
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/"):
        with pytest.raises(outbound.DestinationRefused, match="metadata"):
            outbound.check_url(url)
    # Another link-local address is allowed by the block.
    outbound.check_url("http://169.254.10.10/")
    settings.PORTAL_OUTBOUND_ALLOW = ["169.254.169.254"]
    outbound.check_url("http://169.254.169.254/")


def test_public_addresses_pass_the_check_without_any_allow_list(no_allow_list):
    assert outbound.check_url("https://93.184.215.14/hook") != []


# --- redirects, size, time ----------------------------------------------------------------


def test_a_redirect_to_another_host_is_refused_and_not_followed(server, settings):
    # Both names are allowed: the refusal is about leaving the host, not the address.
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]
    with pytest.raises(outbound.DestinationRefused, match="redirected to another host"):
        outbound.request("GET", f"{server.url}/redirect-other")
    assert server.seen == ["/redirect-other"]


def test_a_redirect_within_the_same_host_is_followed(server, settings):
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    answer = outbound.request("GET", f"{server.url}/redirect-same")
    assert answer.status == 200 and answer.url.endswith("/ok")
    assert server.seen == ["/redirect-same", "/ok"]


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
def test_an_oversized_answer_is_cut_off_with_a_clear_error(server, settings, path):
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    with pytest.raises(outbound.ResponseTooLarge, match="1048576 .*allowed"):
        outbound.request("GET", f"{server.url}{path}", max_bytes=1024 * 1024)
    # The same answer under a larger cap is read whole.
    assert len(outbound.request("GET", f"{server.url}{path}", max_bytes=BIG).body) == BIG


def test_the_read_timeout_is_honoured(server, settings):
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    started = time.monotonic()
    with pytest.raises(outbound.Unreachable, match="did not answer in time"):
        outbound.request("GET", f"{server.url}/slow", read_timeout=0.5)
    assert time.monotonic() - started < 2.5


# --- every caller goes through the client ---------------------------------------------------


@pytest.mark.django_db
def test_notification_webhook_sends_go_through_the_client(demo, server, no_allow_list):
    # A row saved before the address rule existed: refused when sent, never retried.
    notification = Notification.objects.create(
        kind="post_deployment", channel="webhook", recipient=f"{server.url}/hook",
        event_key="test:outbound", subject="Deployed", body="text")
    assert notification_services.notification_send(notification_id=notification.pk) == "failed"
    notification.refresh_from_db()
    assert notification.status == "failed"
    assert "destination refused" in notification.last_error
    assert "loopback" in notification.last_error
    assert AuditEvent.objects.filter(action="notification.failed").exists()
    assert server.seen == []


@pytest.mark.django_db
def test_the_webhook_executor_goes_through_the_client(demo, server, no_allow_list):
    app, env = executor_app("webhook", {"url": f"{server.url}/steps"})
    deployment = run_deployment(demo, app, env)
    assert deployment.status == "failed"
    assert "may not be called" in deployment.failure_reason
    assert "loopback" in deployment.failure_reason
    assert server.seen == []

    metadata_app = Application.objects.create(
        slug="svc-metadata", name="metadata", executor="webhook",
        executor_settings={"url": "http://169.254.169.254/latest/meta-data/"})
    Target.objects.create(application=metadata_app, environment=env, name="node-1")
    refused = run_deployment(demo, metadata_app, env)
    assert refused.status == "failed" and "metadata" in refused.failure_reason


def test_the_http_prober_goes_through_the_client(server, no_allow_list):
    prober = health.HttpProber(samples=3, timeout=1)
    healthy, said = prober.health(("127.0.0.1", server.port))
    assert not healthy and "loopback" in said
    figures = prober.measure({"web-1": ("127.0.0.1", server.port),
                              "meta": ("169.254.169.254", 80)})
    assert figures.health_failures == ["meta", "web-1"] and figures.requests == 0
    assert server.seen == []


def test_prometheus_queries_go_through_the_client(server, no_allow_list):
    provider = health.PrometheusProvider(server.url, {"requests": "up"}, timeout=1)
    with pytest.raises(ValueError, match="may not be called.*loopback"):
        provider.measure_version("1.0.0", ["web-1"])
    metadata = health.PrometheusProvider("http://169.254.169.254", {"requests": "up"})
    with pytest.raises(ValueError, match="metadata"):
        metadata.measure_version("1.0.0", ["web-1"])
    assert server.seen == []


def test_vault_lookups_go_through_the_client(server, no_allow_list):
    from configuration.references import SecretUnavailable, resolve_reference

    for address in (server.url, "http://169.254.169.254"):
        with pytest.raises(SecretUnavailable, match="DestinationRefused"):
            resolve_reference("vault:secret/production/storefront#token",
                              environ={"VAULT_ADDR": address, "VAULT_TOKEN": "t"})
    assert server.seen == []


@pytest.mark.django_db
def test_artifact_downloads_go_through_the_client(demo, server, settings, tmp_path):
    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]
    settings.PORTAL_ARTIFACT_SOURCES = [f"{server.url}/"]
    app = Application.objects.get(slug="storefront")
    digest = hashlib.sha256(b"the build").hexdigest()

    # The source is trusted, but it redirects elsewhere: the client does not follow.
    moved = Release(application=app, version="7.0.0", artifact_sha256=digest,
                    artifact_url=f"{server.url}/redirect-other")
    with pytest.raises(StepFailed, match="could not be fetched.*redirected to another host"):
        fetch_artifact(moved, tmp_path, lambda level, message: None)
    assert server.seen == ["/redirect-other"]

    # Larger than PORTAL_ARTIFACT_MAX_BYTES: cut off, nothing kept.
    settings.PORTAL_ARTIFACT_MAX_BYTES = 1024
    big = Release(application=app, version="7.0.1", artifact_sha256=digest,
                  artifact_url=f"{server.url}/big")
    with pytest.raises(StepFailed, match="could not be fetched.*more than the 1024"):
        fetch_artifact(big, tmp_path, lambda level, message: None)
    assert not (tmp_path / "big").exists()

    # The allow-list emptied: the trusted source's loopback address is refused.
    settings.PORTAL_ARTIFACT_MAX_BYTES = BIG
    settings.PORTAL_OUTBOUND_ALLOW = []
    release = Release(application=app, version="7.0.2", artifact_sha256=digest,
                      artifact_url=f"{server.url}/artifact.tgz")
    with pytest.raises(StepFailed, match="loopback"):
        fetch_artifact(release, tmp_path, lambda level, message: None)
    assert "/artifact.tgz" not in server.seen

    settings.PORTAL_OUTBOUND_ALLOW = ["127.0.0.1"]
    lines = []
    fetched = fetch_artifact(release, tmp_path, lambda level, message: lines.append(message))
    assert fetched.read_bytes() == b"the build"
    assert f"artifact artifact.tgz from {server.url}/artifact.tgz verified: SHA-256 " \
           f"{digest}" in lines


# --- subscriptions refused when saved ---------------------------------------------------------


@pytest.mark.django_db
def test_a_webhook_to_the_metadata_address_is_refused_on_the_page_and_nothing_saved(
        demo, client):
    client.force_login(demo.oncall)
    response = client.post("/notifications/", {
        "environment": "production", "channel": "webhook",
        "target": "http://169.254.169.254/latest/meta-data/iam/"})
    assert response.status_code == 400
    page = response.content.decode()
    # The error sits next to the address field.
    assert 'id="id_target_error"' in page
    error = page.split('id="id_target_error"', 1)[1].split("</p>", 1)[0]
    assert "does not call this address" in error and "metadata" in error
    assert not Subscription.objects.exists()
    assert not AuditEvent.objects.filter(action="subscription.created").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("target", ["http://10.0.0.5/hook", "http://[::1]/hook",
                                    "http://localhost:8000/admin/", "http://127.0.0.1/x",
                                    "http://127.1/x", "http://0x7f.0.0.1/x",
                                    "http://2130706433/x", "http://169.254.169.254./x"])
def test_webhook_subscriptions_to_internal_addresses_are_refused_with_the_field(
        demo, no_allow_list, target):
    from catalog.models import Environment

    with pytest.raises(Invalid) as refused:
        notification_services.subscription_create(
            actor=demo.oncall, channel="slack", target=target,
            environment=Environment.objects.get(slug="production"))
    assert "target" in refused.value.fields
    # Odd numeric spellings are not even URLs to Django ("invalid"); the rest are refused
    # for their address.
    assert refused.value.code in ("destination_refused", "invalid")
    assert not Subscription.objects.exists()
