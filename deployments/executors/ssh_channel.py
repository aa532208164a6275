"""SSH connections of the ``ssh`` executor: pinned host keys, a bastion, remote commands
streamed line by line, and uploads (paramiko).

paramiko rather than asyncssh: the worker runs a deployment's steps one after the other
in a synchronous Celery task, and paramiko's blocking API fits that without an event
loop per step; it is the SSH library Ansible and Fabric stand on, and it loads a client
key from memory, so the key never touches the worker's disk.

Every connection is checked three ways before a command runs: the first hop goes through
``core.outbound`` (the destination rules of every outbound call), the server's host key
must be one pinned for that host in the deployment's environment (``catalog.HostKey``;
paramiko's ``RejectPolicy``: an unknown key is refused, a changed one too), and the
client authenticates with the environment's own key only (no agent, no key files).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import select
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from catalog.services import fingerprint_of, host_pattern
from core import outbound

CONNECT_TIMEOUT = 15.0
CHUNK = 32 * 1024
# The exit status tools/verify_deploy.py's forced-command wrapper gives a refusal.
REFUSED_BY_TARGET = 77


class HostKeyRefused(Exception):
    """The server's host key is not the one pinned for it (or none is pinned)."""

    def __init__(self, message: str, *, host: str, offered: str, pinned: list[str]):
        super().__init__(message)
        self.host, self.offered, self.pinned = host, offered, pinned


class ChannelError(Exception):
    """The connection or a command on it failed; the message says why, for the log."""


@dataclass(frozen=True)
class Endpoint:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, address: str, default_user: str = "") -> Endpoint:
        """``user@host:port``, ``user@host``, ``host`` or ``ssh://user@host:port``."""
        text = (address or "").strip()
        if text.startswith("ssh://"):
            text = text[6:].rstrip("/")
        user, _, rest = text.rpartition("@")
        host, port = rest, 22
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = tail[1:]
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        try:
            port = int(port)
        except ValueError:
            raise ChannelError(f"{address!r} has no valid port") from None
        user = user or default_user
        if not host or not user or not 1 <= port <= 65535:
            raise ChannelError(f"{address!r} is not user@host[:port]")
        return cls(user=user, host=host, port=port)

    @property
    def pattern(self) -> str:
        return host_pattern(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.user}@{self.pattern}"


def load_client_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM), in memory only."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text), password=passphrase or None)
        except (paramiko.SSHException, ValueError):
            continue
    # Never the text or the exception's message: either could quote the key.
    raise ChannelError("the client key could not be read as an Ed25519, ECDSA or RSA "
                       "private key")


class _Pins(paramiko.MissingHostKeyPolicy):
    """Refuses a host none of whose keys is pinned, saying what it offered."""

    def missing_host_key(self, client, hostname, key):
        offered = fingerprint_of(key.get_base64())
        raise HostKeyRefused(
            f"{hostname} offered the host key {key.get_name()} {offered}, and no key is "
            "pinned for it in this environment; an administrator pins it (known_hosts) "
            "after checking it on the server's console", host=hostname, offered=offered,
            pinned=[])


def _behind_the_bastion(endpoint: Endpoint) -> None:
    """A target reached through the bastion is on the bastion's network, not the
    portal's: private addresses are what targets have there. Only a cloud metadata
    service is refused, whatever network it is asked from."""
    host = endpoint.host.lower().rstrip(".").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host in outbound.METADATA_HOSTS or address in outbound.METADATA_ADDRESSES:
        raise outbound.DestinationRefused(f"{host} may not be reached: it is a cloud "
                                          "metadata service")


def _client(pins: dict[str, list[tuple[str, str]]]) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    keys = client.get_host_keys()
    for host, entries in pins.items():
        for key_type, key in entries:
            keys.add(host, key_type, paramiko.PKey.from_type_string(
                key_type, base64.b64decode(key)))
    client.set_missing_host_key_policy(_Pins())
    return client


def _connect(client: paramiko.SSHClient, endpoint: Endpoint, pkey, sock, timeout: float,
             pins) -> None:
    try:
        client.connect(endpoint.host, port=endpoint.port, username=endpoint.user, pkey=pkey,
                       sock=sock, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException as exc:
        offered = fingerprint_of(exc.key.get_base64())
        pinned = [fingerprint_of(k) for _, k in pins.get(endpoint.pattern, [])]
        raise HostKeyRefused(
            f"the host key of {endpoint.pattern} has CHANGED: it offered {offered}, the "
            f"pinned key is {', '.join(pinned) or 'another'}; not connected (the server "
            "was rebuilt, or someone is in the middle)", host=endpoint.pattern,
            offered=offered, pinned=pinned) from None
    except paramiko.AuthenticationException:
        raise ChannelError(f"{endpoint} did not accept the environment's client key") \
            from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ChannelError(f"{endpoint} could not be reached over SSH: "
                           f"{type(exc).__name__}: {exc}") from None


class Connection:
    """One SSH session to a target, through the environment's bastion if it has one."""

    def __init__(self, endpoint: Endpoint, *, pkey, pins, jump: Endpoint | None = None,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._jump_client = None
        try:
            if jump is not None:
                _behind_the_bastion(endpoint)
                self._jump_client = _client(pins)
                _connect(self._jump_client, jump, pkey,
                         outbound.connect_tcp(jump.host, jump.port, timeout=timeout),
                         timeout, pins)
                try:
                    sock = self._jump_client.get_transport().open_channel(
                        "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0),
                        timeout=timeout)
                except (paramiko.SSHException, OSError) as exc:
                    raise ChannelError(f"the bastion {jump} could not open a way to "
                                       f"{endpoint.pattern}: {exc}") from None
            else:
                sock = outbound.connect_tcp(endpoint.host, endpoint.port, timeout=timeout)
        except outbound.OutboundError as exc:
            self.close()
            raise ChannelError(str(exc)) from None
        except BaseException:
            self.close()
            raise
        self.client = _client(pins)
        try:
            _connect(self.client, endpoint, pkey, sock, timeout, pins)
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        transport = self.client.get_transport() if getattr(self, "client", None) else None
        return bool(transport and transport.is_active())

    def close(self) -> None:
        for client in (getattr(self, "client", None), self._jump_client):
            if client is not None:
                client.close()

    # --- commands -------------------------------------------------------------------

    def run(self, command: str, *, line: Callable[[str], None], timeout: float,
            should_stop: Callable[[], str] = lambda: "", poll: float = 1.0) -> tuple[int, str]:
        """Run ``command`` on a pseudo-terminal, handing each output line to ``line``.

        Returns (exit status, last line). The pty makes the remote process group part of
        the session: closing the channel (a cancel, a timeout) hangs it up, so nothing
        keeps running on the target after the portal gave up on it. ``should_stop``
        returns a reason to stop (checked every ``poll`` seconds)."""
        try:
            channel = self.client.get_transport().open_session()
            channel.get_pty(term="dumb", width=250, height=50)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ChannelError(f"{self.endpoint.pattern}: the command could not be started: "
                               f"{exc}") from None
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + poll
        pending, last = b"", ""
        try:
            while True:
                ready, _, _ = select.select([channel], [], [], 0.2)
                if ready:
                    data = channel.recv(CHUNK)
                    if not data:
                        break
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        text = raw.decode(errors="replace").rstrip("\r")
                        if text.strip():
                            last = text
                            line(text[:2000])
                elif channel.exit_status_ready() and not channel.recv_ready():
                    break
                now = time.monotonic()
                if now > deadline:
                    raise ChannelError(f"timed out after {timeout:g} s; the remote command "
                                       "was ended")
                if now > next_poll:
                    next_poll = now + poll
                    reason = should_stop()
                    if reason:
                        raise ChannelError(f"{reason}; the remote command was ended")
            if pending.strip():
                last = pending.decode(errors="replace").rstrip("\r")
                line(last[:2000])
            return channel.recv_exit_status(), last
        finally:
            channel.close()

    def put_via_command(self, local: Path, name: str) -> str:
        """Upload through the target's forced command (``put NAME``, the verifier's
        wrapper): the bytes go over the session's stdin. Returns the SHA-256 the target
        computed."""
        try:
            channel = self.client.get_transport().open_session()
            channel.exec_command(f"put {shlex.quote(name)}")
            with Path(local).open("rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    channel.sendall(chunk)
            channel.shutdown_write()
            out = b""
            while True:
                data = channel.recv(CHUNK)
                if not data:
                    break
                out += data
            err = channel.recv_stderr(CHUNK).decode(errors="replace").strip()
            status = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ChannelError(f"{self.endpoint.pattern}: upload of {name} failed: {exc}") \
                from None
        said = out.decode(errors="replace").split()
        if status != 0 or len(said) != 2 or said[0] != "sha256":
            raise ChannelError(f"{self.endpoint.pattern} refused the upload of {name}: "
                               f"{err or ' '.join(said) or f'exit status {status}'}")
        return said[1]

    def put_via_sftp(self, local: Path, remote_dir: str, name: str) -> str:
        """Upload over SFTP to ``remote_dir/name`` (written beside, then renamed into
        place); returns the SHA-256 the target computes of what it received."""
        path = f"{remote_dir.rstrip('/')}/{name}"
        try:
            with self.client.open_sftp() as sftp:
                _makedirs(sftp, remote_dir)
                sftp.put(str(local), path + ".partial")
                sftp.posix_rename(path + ".partial", path)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ChannelError(f"{self.endpoint.pattern}: SFTP upload of {name} failed: "
                               f"{exc}") from None
        lines: list[str] = []
        status, _ = self.run(f"sha256sum -- {shlex.quote(path)}", line=lines.append,
                             timeout=600)
        digest = lines[-1].split()[0] if status == 0 and lines else ""
        if len(digest) != 64:
            raise ChannelError(f"{self.endpoint.pattern}: the SHA-256 of {path} could not "
                               f"be computed there ({' '.join(lines[-1:]) or status})")
        return digest


def _makedirs(sftp, remote_dir: str) -> None:
    parts = [p for p in remote_dir.split("/") if p]
    path = "/" if remote_dir.startswith("/") else ""
    for part in parts:
        path = f"{path}{part}" if path in ("", "/") else f"{path}/{part}"
        try:
            sftp.stat(path)
        except OSError:
            sftp.mkdir(path)
