"""The portal's clock: services, audit rows and model defaults read the time here.

``now()`` is ``django.utils.timezone.now`` unless a source is installed with
``use(source)``: the demo's history runs the real services in the past this way, and
tests that need another time install one instead of patching Django. One process-wide
source, installed and removed in a ``with`` block by the one command that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from django.utils import timezone

_source: Callable[[], datetime] | None = None


def now() -> datetime:
    """The current time, aware, as the portal sees it."""
    return _source() if _source is not None else timezone.now()


@contextmanager
def use(source: Callable[[], datetime]) -> Iterator[None]:
    """Read the time from ``source`` inside the block; the previous source after it."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
