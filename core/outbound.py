"""The one way the portal calls other systems over HTTP.

Notification webhooks, the webhook executor, the HTTP prober, artifact downloads and
Prometheus queries all go through ``request``. Addresses an outsider should never make
the portal reach are refused: loopback, private, link-local (cloud metadata included),
multicast, reserved and other non-public addresses, unless ``PORTAL_OUTBOUND_ALLOW``
names them (host names, addresses or CIDR blocks, each optionally limited to a port or
a port range: ``127.0.0.1:18100-18199``, ``[::1]:8080``, ``hooks.internal:443``). A
cloud metadata address is allowed only when the allow-list names that very address or
its host name, never through a wider block. A refusal is decided before any connection
and names the address, never the port, so it says nothing about what listens there.

The host name is resolved once; every address it resolves to must be allowed, and the
connection goes to the address that was checked (the ``Host`` header and TLS name stay
the original host), so a second DNS answer cannot send the request elsewhere. Redirects
are followed only to the same scheme, host and port. Connect and read timeouts and a
size cap on the answer apply to every call.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from django.conf import settings

# Cloud instance metadata and platform services: refused unless named one by one.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",     # AWS ECS task metadata
    "169.254.169.253",   # AWS DNS resolver
    "fd00:ec2::254",     # AWS IMDS over IPv6
    "fd00:ec2::253",
    "100.100.100.200",   # Alibaba Cloud
    "168.63.129.16",     # Azure wire server (a public address)
))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data",
                            "instance-data.ec2.internal"})

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: JSON answers of webhooks, probes and queries
MAX_REDIRECTS = 3
CHUNK = 64 * 1024


class OutboundError(Exception):
    """An outbound call did not produce an answer; the message says why."""


class DestinationRefused(OutboundError):
    """The destination (address, scheme or redirect) is not one the portal may call."""


class ResponseTooLarge(OutboundError):
    """The answer was longer than the cap; what was read is discarded."""


class Unreachable(OutboundError):
    """The destination did not answer in time or refused the connection (may pass)."""


@dataclass
class Response:
    url: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self):
        import json

        return json.loads(self.body or b"null")


# --- the address rule ----------------------------------------------------------------


@dataclass(frozen=True)
class _Allowed:
    """PORTAL_OUTBOUND_ALLOW, parsed: each entry with the ports it allows (None: any)."""

    names: dict = field(default_factory=dict)       # host name -> [ports]
    networks: list = field(default_factory=list)    # [(network, ports)]
    singles: dict = field(default_factory=dict)     # address named alone -> [ports]


def _ports(spec: str) -> tuple[int, int] | None:
    """``8080`` or ``8000-8099`` as (low, high); None when ``spec`` is neither."""
    low, _, high = spec.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return None
    first, last = int(low), int(high or low)
    if not 1 <= first <= last <= 65535:
        return None
    return first, last


def _split_entry(entry: str) -> tuple[str, tuple[int, int] | None]:
    """An entry's host part and port range: ``host``, ``host:port``, ``host:low-high``,
    ``[v6]:port``, ``cidr:port``. A bare IPv6 address keeps its colons."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and _ports(rest[1:]):
            return host, _ports(rest[1:])
        return host, None
    host, sep, spec = entry.rpartition(":")
    if sep and host and ":" not in host and _ports(spec):
        return host, _ports(spec)
    return entry, None


def _allow_entries() -> _Allowed:
    """PORTAL_OUTBOUND_ALLOW: host names, addresses or CIDR blocks, each optionally with
    ``:port`` or ``:low-high`` (then only those ports are allowed)."""
    raw = getattr(settings, "PORTAL_OUTBOUND_ALLOW", []) or []
    if isinstance(raw, str):
        raw = raw.split(",")
    allowed = _Allowed()
    for entry in (e.strip() for e in raw):
        if not entry:
            continue
        host, ports = _split_entry(entry)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            allowed.names.setdefault(host.lower().rstrip("."), []).append(ports)
            continue
        allowed.networks.append((network, ports))
        if network.num_addresses == 1:
            allowed.singles.setdefault(network.network_address, []).append(ports)
    return allowed


def _port_in(ranges: list, port: int | None) -> bool:
    """Whether ``port`` is allowed by one of ``ranges`` (None in ``ranges``: any port).

    Without a port (a destination judged before its URL is known whole) an entry of any
    port counts; the call itself is judged again with its port."""
    return any(r is None or port is None or r[0] <= port <= r[1] for r in ranges)


def _plain(address):
    """An IPv4 address hidden in an IPv6 one (mapped, 6to4, Teredo) is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour,
                      address.teredo[1] if address.teredo else None):
            if inner is not None:
                return inner
    return address


def address_refusal(address, host: str = "", port: int | None = None) -> str | None:
    """Why ``address`` (reached as ``host`` on ``port``) may not be called, or None.

    The reason names the address only, never the port, and no connection is tried
    first: a refused destination reads the same whether anything listens there."""
    address = _plain(ipaddress.ip_address(address))
    allowed = _allow_entries()
    host = (host or "").lower().rstrip(".")
    if host and _port_in(allowed.names.get(host, []), port):
        return None
    if address in METADATA_ADDRESSES or host in METADATA_HOSTS:
        return (None if _port_in(allowed.singles.get(address, []), port) else
                f"{address} is a cloud metadata address")
    if any(address in network and _port_in([ports], port)
           for network, ports in allowed.networks):
        return None
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_unspecified or address.is_reserved:
        return f"{address} is a reserved address"
    if address.is_private or not address.is_global:
        return f"{address} is a private address"
    return None


def _host_literal(host: str):
    """The address a host written as a number means (127.1 and 0x7f.0.0.1 included)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0].split("%")[0])


def check_url(url: str, *, resolve: bool = True) -> list[tuple]:
    """Refuse a URL the portal may not call; return the checked socket addresses.

    Without ``resolve`` only what the URL itself says is judged (the scheme, an address
    written in it, names that always mean this machine or a metadata service); that is
    the check made when a destination is saved, the full one is made at each call.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https"):
        raise DestinationRefused(f"only http and https URLs are called, not {url[:80]!r}")
    host = (parsed.hostname or "").lower().rstrip(".")
    if not host:
        raise DestinationRefused("the URL names no host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("the URL's port is not a number from 1 to 65535") from None
    return _checked(host, port, resolve=resolve, verb="called")


def _checked(host: str, port: int, *, resolve: bool, verb: str) -> list[tuple]:
    """The rules above for ``host`` on ``port``: the checked socket addresses, or
    ``DestinationRefused`` saying that the host may not be ``verb``."""
    literal = _host_literal(host)
    if literal is not None:
        reason = address_refusal(literal, host, port)
        if reason:
            raise DestinationRefused(f"{host} may not be {verb}: {reason}")
    elif not _port_in(_allow_entries().names.get(host, []), port) and (
            host == "localhost" or host.endswith(".localhost") or host in METADATA_HOSTS):
        raise DestinationRefused(f"{host} may not be {verb}: it names this machine or a "
                                 "metadata service")
    if not resolve:
        return []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unreachable(f"{host} could not be resolved: {exc}") from None
    checked = []
    for family, _, _, _, sockaddr in infos:
        reason = address_refusal(sockaddr[0], host, port)
        if reason:
            raise DestinationRefused(f"{host} may not be {verb}: {reason}")
        checked.append((family, sockaddr))
    return checked


def check_host(host: str, port: int, *, resolve: bool = True) -> list[tuple]:
    """``check_url`` for a plain TCP destination (an SSH target or bastion): refuse
    a host the portal may not reach; return the checked socket addresses. Without
    ``resolve`` only an address written as such, and names that mean this machine or a
    metadata service, are judged (a host reached through a bastion is resolved there)."""
    host = (host or "").lower().rstrip(".").strip("[]")
    if not host:
        raise DestinationRefused("no host is named")
    if not 1 <= int(port) <= 65535:
        raise DestinationRefused("the port is not a number from 1 to 65535")
    return _checked(host, port, resolve=resolve, verb="reached")


# --- connections to the checked address ------------------------------------------------


def connect_tcp(host: str, port: int, *, timeout: float | None = None) -> socket.socket:
    """A TCP connection to ``host`` within the rules above, to the address that was
    checked (the ``ssh`` executor's first hop). Raises ``DestinationRefused`` or
    ``Unreachable``."""
    addresses = check_host(host, port)
    try:
        return _connect(addresses, timeout or _setting("PORTAL_OUTBOUND_CONNECT_TIMEOUT",
                                                       DEFAULT_CONNECT_TIMEOUT))
    except OSError as exc:
        raise Unreachable(f"{host} could not be reached: {exc}") from None


def _connect(addresses: Iterable[tuple], timeout: float) -> socket.socket:
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, *, addresses, connect_timeout, read_timeout):
        super().__init__(host, port, timeout=read_timeout)
        self._addresses = addresses
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def connect(self):
        self.sock = _connect(self._addresses, self._connect_timeout)
        self.sock.settimeout(self._read_timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def connect(self):
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


def _setting(name: str, default):
    return getattr(settings, name, default)


def request(method: str, url: str, *, body: bytes | None = None,
            headers: dict[str, str] | None = None, connect_timeout: float | None = None,
            read_timeout: float | None = None, total_timeout: float | None = None,
            max_bytes: int | None = None, sink: BinaryIO | None = None) -> Response:
    """Call ``url`` within the rules above; the answer, whatever its status.

    With ``sink`` the body is written there instead of kept (artifact downloads).
    ``read_timeout`` bounds each wait for data, ``total_timeout`` the whole answer.
    Raises ``DestinationRefused``, ``ResponseTooLarge`` or ``Unreachable``.
    """
    connect_timeout = connect_timeout or _setting("PORTAL_OUTBOUND_CONNECT_TIMEOUT",
                                                  DEFAULT_CONNECT_TIMEOUT)
    read_timeout = read_timeout or _setting("PORTAL_OUTBOUND_READ_TIMEOUT",
                                            DEFAULT_READ_TIMEOUT)
    max_bytes = max_bytes or _setting("PORTAL_OUTBOUND_MAX_BYTES", DEFAULT_MAX_BYTES)
    deadline = time.monotonic() + (total_timeout or max(read_timeout * 4, 60.0))
    origin = urllib.parse.urlsplit(url)
    for _ in range(MAX_REDIRECTS + 1):
        addresses = check_url(url)
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        cls = _PinnedHTTPSConnection if parsed.scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, addresses=addresses, connect_timeout=connect_timeout,
                   read_timeout=read_timeout)
        path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            answer = conn.getresponse()
            if answer.status in (301, 302, 303, 307, 308) and answer.getheader("Location"):
                target = urllib.parse.urljoin(url, answer.getheader("Location"))
                moved = urllib.parse.urlsplit(target)
                if (moved.scheme, moved.hostname, moved.port) != (
                        origin.scheme, origin.hostname, origin.port):
                    raise DestinationRefused(
                        f"{host} redirected to another host ({moved.hostname}); "
                        "redirects are followed only within the same host")
                if answer.status == 303 or (answer.status in (301, 302) and method != "HEAD"):
                    method, body = "GET", None
                url = target
                continue
            data = _read(answer, host, max_bytes, sink, deadline)
            return Response(url=url, status=answer.status,
                            headers={k.lower(): v for k, v in answer.getheaders()},
                            body=data)
        except TimeoutError as exc:
            raise Unreachable(f"{host} did not answer in time ({exc or 'timed out'})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{host} could not be reached: {exc}") from None
        finally:
            conn.close()
    raise DestinationRefused(f"more than {MAX_REDIRECTS} redirects from {origin.hostname}")


def _read(answer, host: str, max_bytes: int, sink: BinaryIO | None,
          deadline: float) -> bytes:
    declared = answer.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(f"the answer from {host} is {declared} bytes, more than the "
                               f"{max_bytes} allowed; not read")
    kept = bytearray()
    total = 0
    while True:
        chunk = answer.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ResponseTooLarge(f"the answer from {host} is longer than the {max_bytes} "
                                   "bytes allowed; cut off")
        if time.monotonic() > deadline:
            raise Unreachable(f"{host} did not finish its answer in time")
        if sink is not None:
            sink.write(chunk)
        else:
            kept += chunk
    return bytes(kept)


# --- libraries that speak ``requests`` -------------------------------------------------


def requests_session():
    """A ``requests.Session`` whose every call goes through ``request`` above.

    For libraries that take a session rather than a URL (django-allauth's single sign-on:
    discovery, token and key requests), so the identity provider is reached under the
    same address rule, timeouts and size cap as every other outbound call. A refused or
    unreachable destination is a ``requests.ConnectionError`` to the library.
    """
    import requests
    from requests.adapters import BaseAdapter
    from requests.structures import CaseInsensitiveDict

    class GuardedAdapter(BaseAdapter):
        def send(self, prepared, stream=False, timeout=None, verify=True, cert=None,
                 proxies=None):
            body = prepared.body
            if isinstance(body, str):
                body = body.encode()
            try:
                answer = request(prepared.method, prepared.url, body=body,
                                 headers=dict(prepared.headers))
            except OutboundError as exc:
                raise requests.ConnectionError(str(exc), request=prepared) from None
            response = requests.Response()
            response.status_code = answer.status
            response.headers = CaseInsensitiveDict(answer.headers)
            response._content = answer.body
            response.url = answer.url
            response.request = prepared
            response.encoding = requests.utils.get_encoding_from_headers(response.headers)
            return response

        def close(self):
            pass

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
