"""Who is acting and from where, carried to the audit trail without threading arguments."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    ip: str | None = None
    user_agent: str = ""
    client: str = ""  # the API token's name when the request came with one
    # The request itself, whose user (signed in, or authenticated by the API) is the
    # actor of changes recorded from signals, such as access changes in the admin.
    request: Any = field(default=None, compare=False, repr=False)


_EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "portal_request_context", default=None
)


def bind_request(ctx: RequestContext) -> contextvars.Token:
    return _current.set(ctx)


def unbind_request(token: contextvars.Token) -> None:
    _current.reset(token)


def current() -> RequestContext:
    return _current.get() or _EMPTY


def set_client(name: str) -> None:
    ctx = current()
    _current.set(
        RequestContext(
            request_id=ctx.request_id, ip=ctx.ip, user_agent=ctx.user_agent, client=name,
            request=ctx.request,
        )
    )


def current_user():
    """The authenticated user of the request being served, or None outside one."""
    user = getattr(current().request, "user", None)
    return user if getattr(user, "is_authenticated", False) else None
