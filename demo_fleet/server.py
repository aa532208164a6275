"""One demo service instance: ``python -m demo_fleet --release-dir D --instance-file F``.

It binds a free loopback port (one of ``--ports low-high`` when given: `make run` keeps
the fleet in a range of its own, the only loopback ports the portal may call), writes
``{"pid", "port", "version"}`` to the instance file (atomically), serves until the
instance file stops naming it, then exits: removing the file is how an instance is
stopped, and a wiped deploy root stops its fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def load_behaviour(release_dir: Path) -> dict:
    behaviour = {"error_rate": 0.0, "latency_ms": 0.0, "healthy": True}
    for path in sorted(release_dir.glob("*.json")):
        if path.name == "manifest.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            behaviour.update({k: data[k] for k in behaviour if k in data})
    return behaviour


def make_handler(version: str, name: str, behaviour: dict):
    class Handler(BaseHTTPRequestHandler):
        server_version = "demo-fleet"

        def log_message(self, format, *args):  # noqa: A002 - quiet by design
            return

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Version", version)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if behaviour["latency_ms"]:
                time.sleep(float(behaviour["latency_ms"]) / 1000)
            if self.path.startswith("/health"):
                # A shallow health check, as real ones often are: the bad demo
                # version passes it and fails on real pages, where analysis sees it.
                healthy = bool(behaviour["healthy"])
                body = json.dumps({"status": "ok" if healthy else "error",
                                   "version": version, "target": name}).encode()
                self._answer(200 if healthy else 503, body, "application/json")
                return
            if random.random() < float(behaviour["error_rate"]):
                self._answer(500, b"internal error\n", "text/plain")
                return
            page = (f"<!doctype html><title>Storefront {version}</title>"
                    f"<h1>Storefront {version}</h1><p>Served by {name}.</p>").encode()
            self._answer(200, page, "text/html; charset=utf-8")

    return Handler


def _bind(ports: str, handler, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server on the first free port of ``low-high`` on ``host``, else on any free one."""
    if not ports:
        return ThreadingHTTPServer((host, 0), handler)
    low, _, high = ports.partition("-")
    for port in range(int(low), int(high or low) + 1):
        try:
            return ThreadingHTTPServer((host, port), handler)
        except OSError:
            continue
    raise SystemExit(f"demo fleet: no free port in {ports}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--release-dir", required=True, type=Path)
    parser.add_argument("--instance-file", required=True, type=Path)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--ports", default="",
                        help="low-high: bind the first free port of this range")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the loopback address to listen on (a host of its own)")
    args = parser.parse_args(argv)

    version_file = args.release_dir / "VERSION"
    version = version_file.read_text().strip() if version_file.exists() else "unknown"
    behaviour = load_behaviour(args.release_dir)
    server = _bind(args.ports, make_handler(version, args.name, behaviour), args.host)
    server.daemon_threads = True
    me = os.getpid()
    tmp = args.instance_file.with_suffix(f".{me}.tmp")
    tmp.write_text(json.dumps({"pid": me, "port": server.server_address[1],
                               "version": version, "release_dir": str(args.release_dir)}))
    os.replace(tmp, args.instance_file)

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            try:
                owner = json.loads(args.instance_file.read_text()).get("pid")
            except (OSError, ValueError):
                owner = None
            if owner != me:
                server.shutdown()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
