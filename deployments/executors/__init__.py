"""Executors carry out the SOP steps on the targets; the engine decides what runs when."""

from deployments.executors.base import Executor, StepFailed
from deployments.executors.command import CommandExecutor
from deployments.executors.local import LocalExecutor
from deployments.executors.ssh import SshExecutor
from deployments.executors.webhook import WebhookExecutor
from deployments.inputs import executor_kind

EXECUTORS: dict[str, type[Executor]] = {
    "local": LocalExecutor,
    "command": CommandExecutor,
    "webhook": WebhookExecutor,
    "ssh": SshExecutor,
}


def register_executor(name: str, executor: type[Executor]) -> type[Executor] | None:
    """Make ``executor`` the one for deployments whose executor kind is ``name``; returns
    the one it replaces (None for a new kind). Call it from an ``AppConfig.ready``, or
    in a ``with``-style pair that puts the previous one back."""
    previous = EXECUTORS.get(name)
    EXECUTORS[name] = executor
    return previous


def unregister_executor(name: str, previous: type[Executor] | None = None) -> None:
    """Undo ``register_executor``: put ``previous`` back, or forget ``name``."""
    if previous is None:
        EXECUTORS.pop(name, None)
    else:
        EXECUTORS[name] = previous


def executor_for(deployment, log) -> Executor:
    kind = executor_kind(deployment)
    try:
        return EXECUTORS[kind](deployment, log)
    except KeyError:
        raise StepFailed(f"no executor named {kind!r}") from None


__all__ = ["EXECUTORS", "Executor", "StepFailed", "executor_for", "register_executor",
           "unregister_executor"]
