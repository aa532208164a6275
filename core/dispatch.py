"""How services hand work to background tasks, in one place.

``PORTAL_TASK_DISPATCH`` says what ``enqueue`` does with a task:

- ``celery`` (the default): publish it to the broker; the workers run it;
- ``inline``: run it here and now, in this process (the demo's history);
- ``hold``: keep it in this process's list, run nothing (``held()``); tests that drive
  a service step by step use it so no worker can race them for the same rows.

``override(mode)`` sets the mode for a ``with`` block, for the one command or test that
needs another. Services call ``enqueue`` after commit (``transaction.on_commit``), so
a rolled-back decision queues nothing whatever the mode.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import current_app
from django.conf import settings

logger = logging.getLogger(__name__)

MODES = ("celery", "inline", "hold")


@dataclass
class Held:
    task: str
    args: tuple
    options: dict = field(default_factory=dict)


_override: str | None = None
_held: list[Held] = []


def mode() -> str:
    chosen = _override or getattr(settings, "PORTAL_TASK_DISPATCH", "celery")
    if chosen not in MODES:
        raise ValueError(f"PORTAL_TASK_DISPATCH must be one of {', '.join(MODES)}, "
                         f"not {chosen!r}")
    return chosen


def enqueue(task, *args, **options) -> None:
    """Run ``task`` with ``args`` as the dispatch mode says.

    ``task`` is a Celery task or its name (``"deployments.tasks.deployment_execute"``):
    a service names the task it hands work to, so it need not import the tasks module
    that imports it. ``options`` are Celery's publishing options (``queue``,
    ``task_id``); a broker that cannot be reached raises, for the caller to decide what
    a lost publish means.
    """
    name = task if isinstance(task, str) else task.name
    chosen = mode()
    if chosen == "celery":
        if isinstance(task, str):
            current_app.send_task(name, args=list(args), **options)
        else:
            task.apply_async(args=list(args), **options)
    elif chosen == "inline":
        _task_named(name).apply(args=list(args), throw=True)
    else:
        _held.append(Held(task=name, args=tuple(args), options=dict(options)))


def _task_named(name: str):
    """The task called ``name``, its module imported if this process has not yet."""
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def held(task_name: str | None = None) -> list[Held]:
    """What ``hold`` mode kept, oldest first; only ``task_name``'s when given."""
    return [h for h in _held if task_name is None or h.task == task_name]


def clear_held() -> None:
    _held.clear()


@contextmanager
def override(new_mode: str) -> Iterator[None]:
    """Dispatch in ``new_mode`` inside the block."""
    global _override
    if new_mode not in MODES:
        raise ValueError(f"dispatch mode must be one of {', '.join(MODES)}, not {new_mode!r}")
    previous, _override = _override, new_mode
    try:
        yield
    finally:
        _override = previous
