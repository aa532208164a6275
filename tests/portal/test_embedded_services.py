"""The embedded PostgreSQL and Redis: clear one-line messages instead of tracebacks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from portal import embedded

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(*args, env_extra: dict, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(env_extra)
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_redis_starts_over_a_stale_pid_file_and_says_so(tmp_path, capsys):
    redis = embedded.Redis(tmp_path, free_port())
    redis.dir.mkdir(parents=True)
    redis.pid_file.write_text("999999\n")
    redis.start()
    try:
        assert redis.running_pid()
        assert "removed stale Redis pid file" in capsys.readouterr().err
    finally:
        redis.stop()
    assert redis.running_pid() is None


def test_postgres_starts_over_a_stale_pid_file(tmp_path, capsys):
    pg = embedded.Postgres(tmp_path, free_port())
    pg.data_dir.mkdir(parents=True)
    pg.pid_file.write_text("999999\n")
    pg.start()
    try:
        assert pg.running_pid()
        assert "removed stale PostgreSQL pid file" in capsys.readouterr().err
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=portal dbname=portal") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.stop()
    assert pg.running_pid() is None


def test_a_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(embedded.ServiceError, match=f"port {port} is in use"):
            embedded.Redis(tmp_path, port).start()
        result = manage("migrate", env_extra={"PORTAL_VAR_DIR": str(tmp_path),
                                              "PORTAL_PG_PORT": str(port),
                                              "PORTAL_REDIS_PORT": str(free_port())})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} is in use by another program; set PORTAL_PG_PORT to a free port "
        "or DATABASE_URL to a running server"]


def test_a_second_start_is_refused_with_one_line(tmp_path):
    lock = embedded.RunLock.__new__(embedded.RunLock)
    lock.path, lock.handle = tmp_path / "run.lock", None
    lock.acquire()
    try:
        result = manage("run", "--port", str(free_port()),
                        env_extra={"PORTAL_VAR_DIR": str(tmp_path),
                                   "PORTAL_PG_PORT": str(free_port()),
                                   "PORTAL_REDIS_PORT": str(free_port())})
    finally:
        lock.release()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"the portal is already running from {tmp_path} (pid {os.getpid()})" in result.stderr


def test_a_bad_port_setting_is_one_clear_line(tmp_path):
    result = manage("migrate", env_extra={"PORTAL_VAR_DIR": str(tmp_path),
                                          "PORTAL_PG_PORT": "fifty"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "PORTAL_PG_PORT='fifty' is not a port number" in result.stderr
