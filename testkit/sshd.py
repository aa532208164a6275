"""Real OpenSSH servers on loopback for the SSH deployment tests: app hosts and a bastion.

``start_fleet(base_dir)`` starts one ``sshd -D -e`` per host (Debian's openssh-server),
each on a loopback address of its own (``127.0.0.11``, ``127.0.0.12``, ...; the bastion
``127.0.0.10``) and a free port, with its own ed25519 host key, ``authorized_keys`` and
"disk" (``SshHost.root``, exported to every session as ``$PORTAL_TARGET_ROOT``). Clients
log in with the fleet's ed25519 key and pin the host keys in ``known_hosts``; only the
bastion forwards TCP, so ``ssh -J`` reaches the app hosts through it.

The servers never run as root. Run by root, sshd runs as the system account
``portal-ssh`` (made once by ``scripts/ensure-sshd``), and what it must read or write is
given to that account; run by anyone else, it runs as that user. Either way the host's
user is that account, since an unprivileged sshd can log in no one but itself. Remote
commands get Debian's ``/usr/bin/python3`` (the virtualenv's Python may sit under a home
the account cannot enter).

Every process of a host (its listener, each connection's sshd, each session and what it
left running) is stopped with the host, and only those: testkit/sshd_system.py finds them.
The listener also dies with the process that started it (parent-death signal: strictly,
with the thread that started it, so start fleets and hosts from the test's main thread),
and an ``atexit`` hook stops what is left of every fleet.

Files a test writes as root are root's; ``SshHost.put_file`` and ``SshFleet.give`` hand
them to the hosts' user, and ``SshFleet.shared_dir`` is a directory every host's user can
read and write (a script a forced command runs, say): root's pytest directories are mode
700, out of that user's reach.

Does not import Django.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from testkit.sshd_system import (
    MARK,
    OWNER_FILE,
    SERVED_PREFIX,
    STOP_TIMEOUT,
    Account,
    SshdUnavailable,
    Tools,
    clean_env,
    find_tools,
    kill_all,
    reachable,
    server_account,
    sweep_orphaned_served,
)

__all__ = ["SshFleet", "SshHost", "SshdUnavailable", "find_tools", "start_fleet"]

BASTION_ADDRESS = "127.0.0.10"
START_TIMEOUT = 15.0


def _quote(value: object) -> str:
    """An sshd_config / ssh_config argument (double-quoted when it holds a space)."""
    text = str(value)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


_per_source_penalties: dict[str, bool] = {}


def _needs_penalties_off(tools: Tools, drop: list[str], config: Path) -> bool:
    """OpenSSH 9.8+ penalises a source address after failed logins; every test connects from
    127.0.0.1 and many fail on purpose, so it is turned off where sshd knows the option."""
    if tools.sshd not in _per_source_penalties:
        probe = subprocess.run([*drop, "--", tools.sshd, "-t", "-f", str(config),
                                "-o", "PerSourcePenalties=no"], capture_output=True, text=True,
                               env=clean_env(None, ""), timeout=30)
        _per_source_penalties[tools.sshd] = probe.returncode == 0
    return _per_source_penalties[tools.sshd]


@dataclass(eq=False)
class SshHost:
    """One sshd: an app host or the bastion."""

    name: str
    address: str
    port: int
    user: str
    root: Path  # its disk; $PORTAL_TARGET_ROOT in every session
    host_key_line: str  # its known_hosts line: "[address]:port ssh-ed25519 AAAA..."
    is_bastion: bool = False
    fleet: SshFleet | None = field(default=None, repr=False)
    directory: Path = field(default=Path(), repr=False)  # sshd_config, host key, authorized_keys
    log_path: Path = field(default=Path(), repr=False)  # sshd's own log (-e)
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, repr=False)  # where this start's log lines begin

    @property
    def mark(self) -> str:
        return f"{self.fleet.fleet_id}/{self.name}"

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def authorized_keys_path(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def pid(self) -> int | None:
        """The listening sshd's process id, while it runs."""
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ssh_args(self, *, via: SshHost | None = None) -> list[str]:
        """``ssh`` up to the destination, with the fleet's key and pinned known_hosts
        (``-F``, which a ProxyJump's own ssh reads too); ``via``: jump through that host."""
        args = [self.fleet.tools.ssh, "-F", str(self.fleet.ssh_config), "-p", str(self.port)]
        if via is not None:
            args += ["-J", f"{via.user}@{via.address}:{via.port}"]
        return [*args, f"{self.user}@{self.address}"]

    def run(self, command: str, timeout: float = 30, *, via: SshHost | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` on this host with the OpenSSH client (BatchMode, host key pinned)."""
        return subprocess.run([*self.ssh_args(via=via), command], capture_output=True,
                              text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def put_file(self, relative: str, content: str | bytes, mode: int = 0o644) -> Path:
        """Write a file on this host's disk (``root / relative``), owned by the host's user."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)
        for part in [path, *path.relative_to(self.root).parents]:
            self.fleet.give(self.root / part, recursive=False)
        return path

    def new_host_key(self) -> None:
        """The server was rebuilt (or is an impostor): a new host key on the same address and
        port. Restarts this sshd and waits until it listens; ``host_key_line`` and the fleet's
        known_hosts follow, a copy of the old known_hosts does not."""
        self.stop()
        self.fleet._make_host_key(self)
        self.fleet._write_known_hosts()
        self.start()

    def stop(self) -> None:
        """Kill this sshd and every process of its connections and sessions."""
        fleet = self.fleet
        pid = self._process.pid if self._process is not None else None
        kill_all(pid, fleet.account, lambda mark: mark == self.mark, f"stopping {self.name}")
        if self._process is not None:
            self._process.wait(timeout=STOP_TIMEOUT)
            self._process = None

    def start(self) -> None:
        """Start this sshd on its address and port and wait until it answers SSH."""
        if self.running:
            return
        self.fleet._spawn(self)


@dataclass(eq=False)
class SshFleet:
    """App hosts and a bastion, one client key authorized on all of them."""

    hosts: list[SshHost]
    bastion: SshHost | None
    client_key_pem: str  # OpenSSH-format ed25519 private key
    client_public_line: str  # "ssh-ed25519 AAAA... comment"
    base_dir: Path
    client_key_path: Path = field(repr=False)
    known_hosts_path: Path = field(repr=False)  # the fleet's known_hosts, kept current
    ssh_config: Path = field(repr=False)  # ssh_config for `ssh -F`: key, known_hosts, BatchMode
    account: Account = field(repr=False)
    tools: Tools = field(repr=False)
    fleet_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12], repr=False)
    shared_dir: Path = field(default=Path(), repr=False)  # the hosts' user reads and writes it
    _served: Path = field(default=Path(), repr=False)
    _own_served: bool = field(default=False, repr=False)

    @property
    def all_hosts(self) -> list[SshHost]:
        return [*self.hosts, *([self.bastion] if self.bastion else [])]

    @property
    def known_hosts_text(self) -> str:
        """known_hosts lines of every host and the bastion, with their current keys."""
        return "".join(f"{h.host_key_line}\n" for h in self.all_hosts)

    def host(self, name: str) -> SshHost:
        return next(h for h in self.all_hosts if h.name == name)

    def authorize(self, public_line: str, options: str = "", hosts=None) -> None:
        """Append a key (with authorized_keys options such as ``restrict,command="..."``) to
        the given hosts (SshHost or names; default all app hosts, not the bastion)."""
        line = f"{options} {public_line.strip()}" if options else public_line.strip()
        for host in self._select(hosts):
            text = host.authorized_keys_path.read_text()
            self._write(host.authorized_keys_path, f"{text}{line}\n", 0o600)

    def reset_authorized(self) -> None:
        """Every host, bastion included, back to the fleet's client key alone."""
        for host in self.all_hosts:
            self._write(host.authorized_keys_path, f"{self.client_public_line}\n", 0o600)

    def stop(self) -> None:
        """Stop every sshd and everything its sessions started; idempotent."""
        try:
            for host in self.all_hosts:
                if host._process is not None:
                    host._process.send_signal(signal.SIGSTOP)  # no new connection meanwhile
            for host in self.all_hosts:
                host.stop()
            # Leftovers of any host of this fleet (a host stopped and started, say).
            kill_all(None, self.account, lambda mark: mark.startswith(f"{self.fleet_id}/"),
                      "stopping the fleet")
        finally:
            _LIVE.discard(self)
        if self._own_served:
            shutil.rmtree(self._served, ignore_errors=True)

    # -- building ----------------------------------------------------------------------

    def _select(self, hosts) -> list[SshHost]:
        if hosts is None:
            return list(self.hosts)
        if isinstance(hosts, (SshHost, str)):
            hosts = [hosts]
        return [h if isinstance(h, SshHost) else self.host(h) for h in hosts]

    def give(self, path: Path, *, recursive: bool = True) -> None:
        """Give ``path`` (and what is under it) to the hosts' user (run by root: files the
        test writes are root's, which a remote command may read but not change)."""
        if not self.account.as_root:
            return
        under = path.rglob("*") if recursive and path.is_dir() else []
        for current in [path, *under]:
            os.chown(current, self.account.uid, self.account.gid, follow_symlinks=False)

    def _write(self, path: Path, text: str, mode: int) -> None:
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_text(text)
        temporary.chmod(mode)
        self.give(temporary)
        os.replace(temporary, path)

    def _keygen(self, path: Path, comment: str) -> str:
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)
        subprocess.run([self.tools.keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True, timeout=30)
        return path.with_name(path.name + ".pub").read_text().strip()

    def _make_host_key(self, host: SshHost) -> None:
        public = self._keygen(host.key_path, f"{host.name}-host-key")
        self.give(host.key_path)
        self.give(host.key_path.with_name(host.key_path.name + ".pub"))
        kind, key = public.split()[:2]
        host.host_key_line = f"[{host.address}]:{host.port} {kind} {key}"

    def _write_known_hosts(self) -> None:
        self.known_hosts_path.write_text(self.known_hosts_text)

    def _write_sshd_config(self, host: SshHost) -> None:
        lines = [
            f"# {host.name} of fleet {self.fleet_id}: a test SSH server (testkit/sshd.py)",
            f"ListenAddress {host.address}:{host.port}",
            f"HostKey {_quote(host.key_path)}",
            f"PidFile {_quote(host.directory / 'sshd.pid')}",
            f"AuthorizedKeysFile {_quote(host.authorized_keys_path)}",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PermitUserEnvironment no",
            "Subsystem sftp internal-sftp",
            f"SetEnv {_quote(f'PORTAL_TARGET_ROOT={host.root}')} {MARK}={host.mark}",
            "LogLevel VERBOSE",
            f"AllowTcpForwarding {'yes' if host.is_bastion else 'no'}",
            "AllowAgentForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "GatewayPorts no",
            "MaxStartups 200",
            "MaxSessions 50",
            "ClientAliveInterval 5",
            "ClientAliveCountMax 3",
            "LoginGraceTime 30",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
        ]
        self._write(host.config_path, "\n".join(lines) + "\n", 0o644)

    def _spawn(self, host: SshHost) -> None:
        """Start ``sshd -D -e`` for the host as the account, in a session of its own, and wait
        until it listens on its address and port and answers an SSH banner."""
        account = self.account
        drop = [self.tools.setpriv]
        if account.as_root:
            # Its supplementary groups too: tty, so that its sshd may hand out terminals
            # (OpenSSH gives a new terminal to the group tty; where devpts does not).
            drop += ["--reuid", str(account.uid), "--regid", str(account.gid), "--init-groups"]
        # setpriv sets the parent-death signal after the uid change (which would clear it):
        # a test process that dies, even by SIGKILL, leaves no listener behind.
        command = [*drop, "--pdeathsig", "KILL", "--",
                   self.tools.sshd, "-D", "-e", "-f", str(host.config_path)]
        if _needs_penalties_off(self.tools, drop, host.config_path):
            command += ["-o", "PerSourcePenalties=no"]
        host._log_offset = host.log_path.stat().st_size if host.log_path.exists() else 0
        with open(host.log_path, "ab") as log:
            host._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=host.directory,
                env=clean_env(account, host.mark), start_new_session=True)
        _wait_listening(host)


class _PortTaken(RuntimeError):
    pass


def _wait_listening(host: SshHost) -> None:
    process = host._process
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            host._process = None
            tail = host.log_path.read_bytes()[host._log_offset:].decode(errors="replace")[-2000:]
            if "Address already in use" in tail:
                raise _PortTaken(f"{host.name}: another process took {host.address}:"
                                 f"{host.port} before sshd could listen there")
            raise RuntimeError(f"sshd of {host.name} exited ({process.returncode}): {tail}")
        if _listens(process.pid, host) and _answers_ssh(host):
            return
        if time.monotonic() > deadline:
            host.stop()
            raise RuntimeError(f"sshd of {host.name} did not listen on {host.address}:"
                               f"{host.port} within {START_TIMEOUT} s: {host.log_text()[-2000:]}")
        time.sleep(0.02)


def _listens(pid: int, host: SshHost) -> bool:
    """Is it *this* sshd that listens there (not another fleet's that won a port race)?"""
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr == (host.address, host.port)
               for s in sockets)


def _answers_ssh(host: SshHost) -> bool:
    try:
        with socket.create_connection((host.address, host.port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


_LIVE: set[SshFleet] = set()


@atexit.register
def _stop_live_fleets() -> None:
    for fleet in list(_LIVE):
        try:
            fleet.stop()
        except Exception:  # noqa: BLE001 - stop the others all the same
            pass


def start_fleet(base_dir: Path, n_hosts: int = 4, *, bastion: bool = True) -> SshFleet:
    """Start ``n_hosts`` app hosts (``app-1``... on 127.0.0.11...) and, with ``bastion``, a
    bastion (127.0.0.10) that alone forwards TCP. The client key, known_hosts, ssh_config
    and the servers' logs live in ``base_dir``; the servers' own files too, unless ``base_dir``
    is out of the account's reach (root's pytest directories are mode 700), in which case
    they live in a directory of their own under the system's temporary directory, removed
    by ``stop()``. Raises SshdUnavailable with what to install when sshd is missing."""
    tools = find_tools()
    account = server_account()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    client, logs = base_dir / "client", base_dir / "logs"
    client.mkdir(mode=0o700, exist_ok=True)
    logs.mkdir(exist_ok=True)
    own_served = account.as_root and not reachable(base_dir, account)
    if own_served:
        sweep_orphaned_served()
        served = Path(tempfile.mkdtemp(prefix=SERVED_PREFIX))
        me = psutil.Process()
        (served / OWNER_FILE).write_text(f"{me.pid} {me.create_time()}\n")
        if not reachable(served.parent, account):
            shutil.rmtree(served)
            raise SshdUnavailable(f"{served.parent} is out of reach of the account {account.name}"
                                  "; set TMPDIR to a directory it can enter")
    else:
        served = base_dir / "hosts"
        served.mkdir(exist_ok=True)

    fleet = SshFleet(hosts=[], bastion=None, client_key_pem="", client_public_line="",
                     base_dir=base_dir, client_key_path=client / "id_ed25519",
                     known_hosts_path=client / "known_hosts", ssh_config=client / "ssh_config",
                     account=account, tools=tools, _served=served, _own_served=own_served)
    _LIVE.add(fleet)
    try:
        fleet.client_public_line = fleet._keygen(fleet.client_key_path, "portal-ssh-fleet")
        fleet.client_key_pem = fleet.client_key_path.read_text()
        fleet.shared_dir = served / "shared"
        fleet.shared_dir.mkdir()
        fleet.give(served)
        names = [(f"app-{i}", f"127.0.0.{10 + i}", False) for i in range(1, n_hosts + 1)]
        if bastion:
            names.append(("bastion", BASTION_ADDRESS, True))
        for name, address, is_bastion in names:
            _new_host(fleet, served, logs, name, address, is_bastion)
        _write_client_config(fleet)
        fleet._write_known_hosts()
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _new_host(fleet: SshFleet, served: Path, logs: Path, name: str, address: str,
              is_bastion: bool) -> SshHost:
    directory = served / name
    root = directory / "root"
    root.mkdir(parents=True)
    host = SshHost(name=name, address=address, port=0, user=fleet.account.name, root=root,
                   host_key_line="", is_bastion=is_bastion, fleet=fleet, directory=directory,
                   log_path=logs / f"{name}.log")
    if is_bastion:
        fleet.bastion = host
    else:
        fleet.hosts.append(host)  # before it starts: a failed start_fleet stops it too
    fleet.give(directory)
    fleet._write(host.authorized_keys_path, f"{fleet.client_public_line}\n", 0o600)
    for attempt in range(5):
        # A free port of the host's own address; another process may take it before sshd
        # binds it (sshd then exits saying so): try another.
        host.port = _free_port(address)
        fleet._make_host_key(host)
        fleet._write_sshd_config(host)
        try:
            fleet._spawn(host)
            return host
        except _PortTaken:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _write_client_config(fleet: SshFleet) -> None:
    lines = [
        "# The fleet's client: its key only, host keys pinned in its known_hosts, no prompt.",
        "Host *",
        f"  User {fleet.account.name}",
        f"  IdentityFile {_quote(fleet.client_key_path)}",
        "  IdentitiesOnly yes",
        "  IdentityAgent none",
        f"  UserKnownHostsFile {_quote(fleet.known_hosts_path)}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  UpdateHostKeys no",
        "  CheckHostIP no",
        "  HashKnownHosts no",
        "  BatchMode yes",
        "  ConnectTimeout 10",
        "  ControlMaster no",
        "  ControlPath none",
        "  ServerAliveInterval 5",
    ]
    fleet.ssh_config.write_text("\n".join(lines) + "\n")
    fleet.ssh_config.chmod(0o600)
