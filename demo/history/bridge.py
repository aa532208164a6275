"""Where the portal's services do not read ``core.clock`` or queue through
``core.dispatch`` yet, the history routes them there while it runs.

The history is written against the plug-in points only (``core.clock.use``,
``core.dispatch.override``, ``register_executor``, ``register_health_provider``). Three
readers still go around them:

- ``deployments.services``, ``approvals.services``, ``notifications.services``,
  ``audit.trail`` (the audit writer's ``occurred_at``) and ``identity.assurance`` read
  ``django.utils.timezone.now()`` directly: ``time_readers`` points it at the history's
  clock;
- ``deployments.services._enqueue`` publishes ``deployment_execute`` to the broker, and
  ``notifications.services._enqueue`` publishes ``notification_send``:
  ``queue_through_dispatch`` hands both to ``core.dispatch.enqueue`` instead, so the
  dispatch mode the history sets decides.

Each part does nothing once its readers have moved: ``time_readers`` is needed until
none of them calls ``timezone.now()``, and ``queue_through_dispatch`` touches only a
module that still has its own ``_enqueue``. Then this module goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import django.utils.timezone

from core import dispatch


@contextmanager
def time_readers(source: Callable[[], datetime]) -> Iterator[None]:
    """``django.utils.timezone.now`` reads ``source`` inside the block."""
    real = django.utils.timezone.now
    django.utils.timezone.now = source
    try:
        yield
    finally:
        django.utils.timezone.now = real


def _deployment_enqueue(deployment_id: int, task_id: str) -> bool:
    from deployments.models import Deployment
    from deployments.services import deploy_queue
    from deployments.tasks import deployment_execute

    slug = (Deployment.objects.filter(pk=deployment_id)
            .values_list("environment__slug", flat=True).first())
    dispatch.enqueue(deployment_execute, deployment_id, task_id=task_id,
                     queue=deploy_queue(slug or ""))
    return True


def _notification_enqueue(ids: list[int]) -> None:
    from notifications.tasks import notification_send

    for pk in ids:
        dispatch.enqueue(notification_send, pk)


@contextmanager
def queue_through_dispatch() -> Iterator[None]:
    """The engine's and the notifications' own ``_enqueue`` go through ``core.dispatch``
    inside the block (where those modules still have one)."""
    from deployments import services as deployment_services
    from notifications import services as notification_services

    replaced = []
    for module, replacement in ((deployment_services, _deployment_enqueue),
                                (notification_services, _notification_enqueue)):
        if callable(getattr(module, "_enqueue", None)):
            replaced.append((module, module._enqueue))
            module._enqueue = replacement
    try:
        yield
    finally:
        for module, original in replaced:
            module._enqueue = original
