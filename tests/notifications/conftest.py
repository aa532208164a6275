"""Fixtures of the notification tests: a webhook receiver on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture
def receiver():
    """A webhook receiver on loopback that records what it got; /fail answers 503 once."""
    received: list[dict] = []
    failures = {"left": 1}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/fail" and failures["left"]:
                failures["left"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            received.append({"path": self.path, "body": body,
                             "key": self.headers.get("Idempotency-Key")})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.received = received
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
