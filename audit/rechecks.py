"""Re-checks of past decisions that ``verify_audit`` runs on request (``--policies``):
apps above the trail register them here, so the trail names no app of theirs.

A re-check is a callable answering ``(all agree, report lines)``.
"""

from __future__ import annotations

from collections.abc import Callable

Recheck = Callable[[], tuple[bool, list[str]]]
_RECHECKS: dict[str, Recheck] = {}


def register_recheck(name: str, recheck: Recheck) -> None:
    _RECHECKS[name] = recheck


def recheck(name: str) -> tuple[bool, list[str]]:
    if name not in _RECHECKS:
        return False, [f"no re-check named {name!r} is registered"]
    return _RECHECKS[name]()
