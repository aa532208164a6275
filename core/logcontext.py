"""What a log line is about: the deployment, change or hook delivery being handled.

STYLE 12: one grep follows one change. The boundaries that handle one of them (the
Celery tasks that run a deployment, the approval decision views and API, the incoming
hook views) wrap their work in ``bind(deployment_id=..., change_id=..., delivery_id=...)``;
every record logged inside, by any logger of ours or of a library, carries those ids:
``ContextFilter`` (on the handlers, portal/settings.py ``LOGGING``) copies them onto the
record, and the formatters write them out: one JSON object a line when
``PORTAL_LOG_FORMAT=json`` (``JsonFormatter``), else the plain line with
``deployment_id=12 change_id=40`` appended (``ContextFormatter``).

The ids live in a ``contextvars.ContextVar``, so concurrent requests and tasks do not
see each other's; a thread does not inherit them, so code that starts one for the same
work starts it with ``carried(target)`` (``contextvars.copy_context().run``).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# The ids a record can be about, in the order they are written.
IDS = ("deployment_id", "change_id", "delivery_id")

_EMPTY: MappingProxyType = MappingProxyType({})
_bound: contextvars.ContextVar[MappingProxyType] = contextvars.ContextVar(
    "portal_log_ids", default=_EMPTY)


@contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """Log inside the block as being about ``ids`` (``None`` values are left out);
    ids bound by an enclosing block stay unless named again."""
    unknown = set(ids) - set(IDS)
    if unknown:
        raise TypeError(f"bind() takes {', '.join(IDS)}, not {', '.join(sorted(unknown))}")
    merged = {**_bound.get(), **{k: v for k, v in ids.items() if v is not None}}
    token = _bound.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _bound.reset(token)


def bound() -> dict[str, Any]:
    """The ids bound here and now."""
    return dict(_bound.get())


def bind_from_url(**url_kwargs: str):
    """A view decorator binding ids from the URL: ``@bind_from_url(change_id="pk")``."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            with bind(**{name: kwargs.get(kwarg) for name, kwarg in url_kwargs.items()}):
                return view(request, *args, **kwargs)
        return wrapped

    return decorate


def carried(target: Callable[..., Any]) -> Callable[..., Any]:
    """``target`` run in a copy of the current context: give it to a thread started
    for the same work, so that what it logs carries the same ids."""
    return functools.partial(contextvars.copy_context().run, target)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto every record (an id the call passed in ``extra``
    wins); lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _bound.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def ids_of(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in IDS
            if getattr(record, name, None) is not None}


class ContextFormatter(logging.Formatter):
    """The plain line, with the record's ids appended (``... deployment_id=12``).

    ``inner`` is a formatter to append to (Celery's, in the worker); without one the
    format given, as ``logging.Formatter`` takes it."""

    def __init__(self, *args, inner: logging.Formatter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        ids = ids_of(record)
        if not ids:
            return text
        suffix = " ".join(f"{name}={value}" for name, value in ids.items())
        # After the message's first line, so a traceback below it stays readable.
        first, newline, rest = text.partition("\n")
        return f"{first} {suffix}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the ids, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **ids_of(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def log_format() -> str:
    """``PORTAL_LOG_FORMAT``: ``json`` or ``plain`` (the default)."""
    chosen = os.environ.get("PORTAL_LOG_FORMAT", "plain").strip().lower() or "plain"
    if chosen not in ("plain", "json"):
        raise ValueError(f"PORTAL_LOG_FORMAT must be plain or json, not {chosen!r}")
    return chosen


def install_on(logger: logging.Logger) -> None:
    """Give ``logger``'s handlers the filter and this format (keeping a plain
    handler's own format, ids appended): for handlers made outside ``LOGGING``, as the
    Celery worker makes its own."""
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        current = handler.formatter
        if isinstance(current, (ContextFormatter, JsonFormatter)):
            continue
        handler.setFormatter(JsonFormatter() if log_format() == "json"
                             else ContextFormatter(inner=current or logging.Formatter()))


def logging_config(*, log_format: str, level: str) -> dict:
    """Django's ``LOGGING`` for the portal: one console handler carrying the ids, in
    ``log_format`` (``plain`` or ``json``; anything else is refused)."""
    if log_format not in ("plain", "json"):
        raise ValueError(f"PORTAL_LOG_FORMAT must be plain or json, not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"log_context": {"()": "core.logcontext.ContextFilter"}},
        "formatters": {
            "plain": {"()": "core.logcontext.ContextFormatter",
                      "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "core.logcontext.JsonFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format,
                                 "filters": ["log_context"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            "django.server": {"level": "WARNING"},
        },
    }
