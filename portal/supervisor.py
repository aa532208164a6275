"""Supervision for `make run`: what dies is started again, with backoff.

The web server, the Celery worker and beat, and the embedded PostgreSQL and Redis
are each a component. ``Supervisor.check`` (called every half second by
``manage.py run``) notices a component that died, logs one line, and starts it
again after a delay that doubles with each failure in the window (1 s, 2 s, 4 s,
capped at 8 s). The rest keeps running meanwhile: the web server keeps serving
while the worker comes back. Only a component that fails ``max_failures`` times
within ``window`` seconds stops everything, with one line saying which and why.

This module does not import Django: the tests drive it directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable

from portal import embedded


class GiveUp(Exception):
    """A component keeps failing: everything stops, with this one line."""


class Component:
    name = "component"

    def start(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def how_it_ended(self) -> str:
        return "stopped"

    def cleanup_after_death(self) -> None:
        """Anything the dead component left behind (orphaned children)."""


class ProcessComponent(Component):
    """A child process in its own session, so its whole group can be stopped."""

    def __init__(self, name: str, argv: list[str], env: dict) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def how_it_ended(self) -> str:
        code = self.proc.returncode if self.proc else None
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def cleanup_after_death(self) -> None:
        # A worker's pool children outlive a killed main process; they would hold
        # deployments' run locks. The group id is the first process's pid.
        if self.proc is not None:
            _killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group


class ServerComponent(Component):
    """An embedded server (PostgreSQL or Redis), daemonized and known by its pid file."""

    def __init__(self, name: str, server: embedded.Postgres | embedded.Redis) -> None:
        self.name = name
        self.server = server

    def start(self) -> None:
        self.server.start()

    def alive(self) -> bool:
        return self.server.running_pid() is not None

    def how_it_ended(self) -> str:
        return "is no longer running"

    def cleanup_after_death(self) -> None:
        cleanup = getattr(self.server, "kill_orphans", None)
        if cleanup is not None:
            cleanup()

    def stop(self) -> None:
        self.server.stop()


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class _Watch:
    def __init__(self, component: Component) -> None:
        self.component = component
        self.failures: deque[float] = deque()
        self.restart_at: float | None = None  # None: running
        self.restarts = 0


class Supervisor:
    def __init__(self, components: list[Component], *, say: Callable[[str], None],
                 max_failures: int = 5, window: float = 60.0, first_delay: float = 1.0,
                 max_delay: float = 8.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.watches = [_Watch(c) for c in components]
        self.say = say
        self.max_failures = max_failures
        self.window = window
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.clock = clock

    def component(self, name: str) -> Component:
        return next(w.component for w in self.watches if w.component.name == name)

    def restarts(self, name: str) -> int:
        return next(w.restarts for w in self.watches if w.component.name == name)

    def add(self, component: Component) -> None:
        """Start one more component and watch it from now on."""
        component.start()
        self.watches.append(_Watch(component))

    def start_all(self) -> None:
        for watch in self.watches:
            watch.component.start()

    def _failed(self, watch: _Watch, what: str) -> None:
        now = self.clock()
        watch.failures.append(now)
        while watch.failures and watch.failures[0] < now - self.window:
            watch.failures.popleft()
        count = len(watch.failures)
        if count >= self.max_failures:
            raise GiveUp(f"the {watch.component.name} {what}; it failed {count} times in "
                         f"{int(self.window)} s, stopping everything")
        delay = min(self.max_delay, self.first_delay * 2.0 ** (count - 1))
        watch.restart_at = now + delay
        self.say(f"the {watch.component.name} {what}; restarting it in {delay:g} s "
                 f"(failure {count} of {self.max_failures} allowed in {int(self.window)} s)")

    def check(self) -> None:
        """One pass: notice deaths, start what is due. Raises GiveUp."""
        for watch in self.watches:
            component = watch.component
            if watch.restart_at is None:
                if component.alive():
                    continue
                component.cleanup_after_death()
                self._failed(watch, component.how_it_ended())
            elif self.clock() >= watch.restart_at:
                try:
                    component.start()
                except embedded.ServiceError as exc:
                    self._failed(watch, f"did not start: {exc}")
                    continue
                except OSError as exc:
                    self._failed(watch, f"did not start: {exc}")
                    continue
                watch.restart_at = None
                watch.restarts += 1
                self.say(f"the {component.name} is running again (restart {watch.restarts})")
