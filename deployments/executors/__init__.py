"""Executors carry out the SOP steps on the targets; the engine decides what runs when."""

from deployments.executors.base import Executor, StepFailed
from deployments.executors.command import CommandExecutor
from deployments.executors.local import LocalExecutor
from deployments.executors.webhook import WebhookExecutor
from deployments.inputs import executor_kind

EXECUTORS: dict[str, type[Executor]] = {
    "local": LocalExecutor,
    "command": CommandExecutor,
    "webhook": WebhookExecutor,
}


def executor_for(deployment, log) -> Executor:
    kind = executor_kind(deployment)
    try:
        return EXECUTORS[kind](deployment, log)
    except KeyError:
        raise StepFailed(f"no executor named {kind!r}") from None


__all__ = ["EXECUTORS", "Executor", "StepFailed", "executor_for"]
