from __future__ import annotations

from collections.abc import Callable


class StepFailed(Exception):
    """A step could not be completed; the message says why, for the deployment log."""


class Executor:
    """Runs one named step of one deployment. Steps must be safe to repeat."""

    def __init__(self, deployment, log: Callable[[str, str], None]) -> None:
        self.deployment = deployment
        self.log = log

    def run_step(self, name: str) -> str:
        handler = getattr(self, f"step_{name}", None)
        if handler is None:
            raise StepFailed(f"{type(self).__name__} has no step {name!r}")
        return handler() or ""
