"""The machine side of the test SSH servers (testkit/sshd.py): which sshd, which account it
runs as, and finding and killing every process of a fleet or of one of its hosts.

A fleet's processes are found by what they are, never by user name alone (fleets of
parallel test processes share the account): a listener's process tree, frozen with SIGSTOP
so that nothing forks meanwhile, and every process of the account whose environment
carries the host's ``PORTAL_SSH_FLEET`` mark (sshd sets it in each session with
``SetEnv``; what a session starts inherits it, even once detached from the tree).

Does not import Django.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ACCOUNT = os.environ.get("PORTAL_SSH_SYSTEM_USER", "portal-ssh")
MARK = "PORTAL_SSH_FLEET"  # in the environment of every process of a host: "<fleet>/<host>"
INSTALL_HINT = ("the SSH tests need OpenSSH's server and client: install them (Debian/Ubuntu: "
                "sudo apt-get install openssh-server) or run scripts/ensure-sshd, then run the "
                "tests again")
STOP_TIMEOUT = 10.0


class SshdUnavailable(RuntimeError):
    """The machine cannot run the test servers; the message says, in one line, what to do."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    as_root: bool  # started by root: drop to this account


@dataclass(frozen=True)
class Tools:
    sshd: str
    keygen: str
    ssh: str
    setpriv: str


def find_tools() -> Tools:
    """sshd (``PORTAL_SSHD``, else Debian's), ssh-keygen, ssh and setpriv, or SshdUnavailable."""
    candidates = [os.environ.get("PORTAL_SSHD", ""), "/usr/sbin/sshd", shutil.which("sshd") or ""]
    sshd = next((p for p in candidates if p and os.path.isabs(p) and os.access(p, os.X_OK)), None)
    keygen, ssh = shutil.which("ssh-keygen"), shutil.which("ssh")
    if not (sshd and keygen and ssh):
        raise SshdUnavailable(INSTALL_HINT)
    setpriv = shutil.which("setpriv")
    if not setpriv:
        raise SshdUnavailable("the SSH tests need setpriv: install util-linux "
                              "(Debian/Ubuntu: sudo apt-get install util-linux)")
    return Tools(sshd=sshd, keygen=keygen, ssh=ssh, setpriv=setpriv)


def server_account() -> Account:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir, as_root=False)
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        raise SshdUnavailable(
            f"as root, the test SSH servers run as the system account {ACCOUNT}, which is "
            "missing: run scripts/ensure-sshd as root once (make test does)") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, as_root=True)


def reachable(path: Path, account: Account) -> bool:
    """Can the account (its primary group only: sshd runs without others) enter ``path``?"""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marked(account: Account, matches) -> set[psutil.Process]:
    """The account's live processes whose PORTAL_SSH_FLEET mark ``matches``."""
    found = set()
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is None or uids.real != account.uid:
            continue
        try:
            if matches(process.environ().get(MARK, "")) and alive(process):
                found.add(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def freeze_tree(pid: int) -> set[psutil.Process]:
    """SIGSTOP a process and all its descendants, until no new one appears, and return them:
    a stopped process forks no connection or session that a kill would then miss."""
    try:
        frozen = {psutil.Process(pid)}
    except psutil.NoSuchProcess:
        return set()
    while True:
        for process in list(frozen):
            try:
                process.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
        tree = set(frozen)
        for process in list(frozen):
            try:
                tree.update(process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        if tree == frozen:
            return frozen
        frozen = tree


def kill_all(listener_pid: int | None, account: Account, matches, what: str) -> None:
    """SIGKILL a listener's process tree and every marked process; return once all are gone."""
    victims = freeze_tree(listener_pid) if listener_pid else set()
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        victims |= marked(account, matches)
        living = [p for p in victims if alive(p)]
        if not living:
            return
        for process in living:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: processes still alive after SIGKILL: "
                               f"{sorted(p.pid for p in living)}")
        time.sleep(0.01)


def clean_env(account: Account | None, mark: str) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if account:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    if mark:
        env[MARK] = mark
    return env


SERVED_PREFIX = "portal-ssh-fleet-"
OWNER_FILE = ".owner"  # "<pid> <create time>" of the process whose fleet this is


def sweep_orphaned_served() -> None:
    """Remove the servers' directories of fleets whose test process died without stopping
    them (SIGKILL: no atexit); its listeners died with it (parent-death signal)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{SERVED_PREFIX}*"):
        try:
            pid, created = (directory / OWNER_FILE).read_text().split()
            process = psutil.Process(int(pid))
            if abs(process.create_time() - float(created)) < 0.01:
                continue  # its owner lives
        except FileNotFoundError:
            if time.time() - directory.stat().st_mtime < 60:
                continue  # being made right now
        except (psutil.NoSuchProcess, ValueError, OSError):
            pass
        shutil.rmtree(directory, ignore_errors=True)


