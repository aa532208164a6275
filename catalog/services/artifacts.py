"""Artifact trust (SOP 10.1): which sources an artifact may come from, and how its
URL is shown in logs and messages. Registration and the worker both ask here."""

from __future__ import annotations

import os
import re
import urllib.parse

from django.conf import settings

from core import outbound
from core.errors import Invalid


def _artifact_refused(why: str) -> Invalid:
    return Invalid(f"artifact_url: {why}", code="artifact_untrusted",
                   fields={"artifact_url": [why]})


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def artifact_display(url: str) -> str:
    """An artifact URL fit for logs and messages: no credentials, no query string."""
    parsed = urllib.parse.urlsplit(url)
    netloc = parsed.hostname or ""
    try:
        if parsed.port:
            netloc += f":{parsed.port}"
    except ValueError:
        pass
    shown = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", shown)[:300]


def artifact_source_check(*, url: str) -> str:
    """SOP 10.1: the artifact URL names a trusted source (``PORTAL_ARTIFACT_SOURCES``).

    Returns what is to be read: the real path of a file:// artifact (symlinks resolved,
    inside a trusted directory), or the URL of an http(s) one. Raises ``Invalid`` on
    the ``artifact_url`` field otherwise. Registration and the worker both call it.
    """
    sources = [s.strip() for s in settings.PORTAL_ARTIFACT_SOURCES if s.strip()]
    trusted = ", ".join(sources) or "none configured"
    if any(c in url for c in "\x00\r\n\t\\"):
        raise _artifact_refused("the URL contains control characters or backslashes")
    if _CONTROL.search(urllib.parse.unquote(url)):
        # %00 and its kind: a path holding NUL cannot be opened (a ValueError deep in
        # os.path), and a control character has no place in an artifact's name.
        raise _artifact_refused("the URL contains percent-encoded control characters")
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    path = urllib.parse.unquote(parsed.path)
    if ".." in path.split("/"):
        raise _artifact_refused("'..' is not allowed in an artifact path")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise _artifact_refused("a file:// artifact URL is an absolute path on this host")
        real = os.path.realpath(path)
        for source in sources:
            prefix = urllib.parse.urlsplit(source)
            if prefix.scheme.lower() != "file":
                continue
            root = os.path.realpath(urllib.parse.unquote(prefix.path)).rstrip("/") + "/"
            if real.startswith(root):
                return real
        raise _artifact_refused(f"{artifact_display(url)} is not inside a trusted artifact "
                                f"source ({trusted})")
    if scheme not in ("http", "https"):
        raise _artifact_refused("artifact URLs are file://, http:// or https://")
    if parsed.username is not None or parsed.password is not None:
        raise _artifact_refused("credentials do not belong in an artifact URL")
    try:
        outbound.check_url(url, resolve=False)
    except outbound.DestinationRefused as exc:
        raise _artifact_refused(str(exc)) from None
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _artifact_refused("the URL's port is not a number") from None
    for source in sources:
        prefix = urllib.parse.urlsplit(source)
        if prefix.scheme.lower() != scheme or not prefix.hostname:
            continue
        prefix_port = prefix.port or (443 if scheme == "https" else 80)
        if (prefix.hostname.lower(), prefix_port) != ((parsed.hostname or "").lower(), port):
            continue
        root = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
        if parsed.path.startswith(root) or parsed.path == prefix.path:
            return url
    raise _artifact_refused(f"{artifact_display(url)} is not under a trusted artifact "
                            f"source ({trusted})")


# Characters of a path below a trusted source that the check above accepts whatever
# comes before them; a dot is followed by another of them, so no segment is "..".
_PATH_TAIL = r"(?:[A-Za-z0-9_~+/-]|\.[A-Za-z0-9_~+-])*"


def _regex_escape(text: str) -> str:
    # Only what is special in both ECMA 262 and Python regular expressions.
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)


def artifact_url_pattern() -> str:
    """A regular expression (for the OpenAPI schema) of artifact URLs that
    ``artifact_source_check`` accepts: blank, or a plain path under one of the trusted
    sources. Other URLs it accepts exist (escaped characters, another spelling of the
    host); the schema names the plain ones."""
    sources = [s.strip() for s in settings.PORTAL_ARTIFACT_SOURCES if s.strip()]
    prefixes = sorted({_regex_escape(s.rstrip("/") + "/") for s in sources})
    if not prefixes:
        return "^$"
    return f"^$|^(?:{'|'.join(prefixes)}){_PATH_TAIL}$"
