"""The SSH test fleet (testkit/sshd.py) as the SSH deployment tests use it: real OpenSSH
servers on loopback, reached with the real `ssh` and `sftp` clients, host keys pinned."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from testkit.sshd import SshFleet, SshHost, start_fleet

CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


def client_config(tmp_path: Path, name: str, key_pem: str, known_hosts_text: str) -> Path:
    """An ssh_config made only of what a client is handed: a private key's text and a
    known_hosts text, pinned (ProxyJump's own ssh reads the same file)."""
    directory = tmp_path / name
    directory.mkdir()
    key = directory / "id_ed25519"
    key.write_text(key_pem)
    key.chmod(0o600)
    (directory / "known_hosts").write_text(known_hosts_text)
    config = directory / "ssh_config"
    config.write_text(
        "Host *\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
        f"  UserKnownHostsFile {directory / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n")
    config.chmod(0o600)
    return config


def pinned_config(tmp_path: Path, fleet: SshFleet, name: str = "pinned") -> Path:
    return client_config(tmp_path, name, fleet.client_key_pem, fleet.known_hosts_text)


def ssh(config: Path, host: SshHost, command: str, *,
        jump: SshHost | None = None) -> subprocess.CompletedProcess:
    args = ["ssh", "-F", str(config), "-p", str(host.port)]
    if jump is not None:
        args += ["-J", f"{jump.user}@{jump.address}:{jump.port}"]
    return subprocess.run([*args, f"{host.user}@{host.address}", command], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_a_command_runs_on_each_host_as_the_fleet_user_on_its_own_disk(ssh_fleet):
    assert len(ssh_fleet.hosts) == 4
    assert len({h.address for h in ssh_fleet.all_hosts}) == 5
    for host in ssh_fleet.hosts:
        result = host.run('id -un; printf "%s\\n" "$PORTAL_TARGET_ROOT"; '
                          'echo "written on $PORTAL_TARGET_ROOT" > "$PORTAL_TARGET_ROOT/mark"; '
                          '/usr/bin/python3 -c "import cryptography; print(\'python ok\')"')
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [host.user, str(host.root), "python ok"]
        assert (host.root / "mark").read_text() == f"written on {host.root}\n"
    # Each host wrote on its own disk only.
    assert len({h.root for h in ssh_fleet.hosts}) == 4
    if os.geteuid() == 0:
        assert ssh_fleet.hosts[0].user == "portal-ssh"  # as root, never root on the hosts


def test_a_host_is_reached_through_the_bastion_with_the_same_pinned_known_hosts(
        ssh_fleet, tmp_path):
    pinned = pinned_config(tmp_path, ssh_fleet)
    bastion, target = ssh_fleet.bastion, ssh_fleet.hosts[1]
    accepted_before = bastion.log_text().count("Accepted publickey")

    result = ssh(pinned, target, 'printf "%s" "$PORTAL_TARGET_ROOT"', jump=bastion)
    assert result.returncode == 0, result.stderr
    assert result.stdout == str(target.root)
    assert bastion.log_text().count("Accepted publickey") == accepted_before + 1

    # The jump's own ssh checks the bastion against the same pins: without its line, no hop.
    without_bastion = "".join(line + "\n" for line in ssh_fleet.known_hosts_text.splitlines()
                              if not line.startswith(f"[{bastion.address}]:"))
    unpinned = client_config(tmp_path, "no-bastion-pin", ssh_fleet.client_key_pem,
                             without_bastion)
    refused = ssh(unpinned, target, "true", jump=bastion)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr

    # App hosts do not forward: only the bastion is a jump host.
    refused = ssh(pinned, target, "true", jump=ssh_fleet.hosts[0])
    assert refused.returncode == 255
    assert "administratively prohibited" in refused.stderr

    # The route goes through the bastion: it down, the jump fails; it back, the jump works.
    bastion.stop()
    try:
        assert ssh(pinned, target, "true", jump=bastion).returncode == 255
    finally:
        bastion.start()
    assert ssh(pinned, target, "true", jump=bastion).returncode == 0


def test_a_new_host_key_is_refused_by_the_pinned_known_hosts(ssh_fleet, tmp_path):
    pinned = pinned_config(tmp_path, ssh_fleet)
    host = ssh_fleet.hosts[2]
    address, port, old_line = host.address, host.port, host.host_key_line

    host.new_host_key()

    assert (host.address, host.port) == (address, port)
    assert host.host_key_line != old_line
    assert host.host_key_line.startswith(f"[{address}]:{port} ssh-ed25519 ")
    refused = ssh(pinned, host, 'touch "$PORTAL_TARGET_ROOT/ran-after-rebuild"')
    assert refused.returncode == 255
    assert any(message in refused.stderr for message in CHANGED), refused.stderr
    assert not (host.root / "ran-after-rebuild").exists()
    # The rebuilt server listens again, under its new key; the other pins still hold.
    assert host.run("true").returncode == 0
    assert host.host_key_line in ssh_fleet.known_hosts_text
    assert ssh(pinned, ssh_fleet.hosts[3], "true").returncode == 0


def test_a_key_with_a_forced_command_runs_only_that_command(ssh_fleet, tmp_path):
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    deploy = client_config(tmp_path, "deploy", key.read_text(), ssh_fleet.known_hosts_text)
    forced_on, other = ssh_fleet.hosts[0], ssh_fleet.hosts[1]
    ssh_fleet.authorize(key.with_suffix(".pub").read_text(), 'restrict,command="echo forced"',
                        hosts=[forced_on])
    try:
        result = ssh(deploy, forced_on, 'touch "$PORTAL_TARGET_ROOT/escaped"; echo asked')
        assert (result.returncode, result.stdout) == (0, "forced\n"), result.stderr
        assert not (forced_on.root / "escaped").exists()
        # Authorized on that host only, and never on the bastion.
        for elsewhere in (other, ssh_fleet.bastion):
            refused = ssh(deploy, elsewhere, "true")
            assert refused.returncode == 255
            assert "Permission denied" in refused.stderr
    finally:
        ssh_fleet.reset_authorized()
    refused = ssh(deploy, forced_on, "echo asked")
    assert (refused.returncode, refused.stdout) == (255, "")
    assert "Permission denied" in refused.stderr
    assert forced_on.run("true").returncode == 0  # the fleet's own key still logs in


def test_a_forced_command_runs_a_shared_script_that_changes_files_put_on_the_host(
        ssh_fleet, tmp_path):
    key = tmp_path / "switch_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    script = ssh_fleet.shared_dir / "switch.py"
    script.write_text(
        "import os, pathlib\n"
        "version = pathlib.Path(os.environ['PORTAL_TARGET_ROOT'], 'current', 'VERSION')\n"
        "version.write_text(os.environ['SSH_ORIGINAL_COMMAND'] + '\\n')\n"
        "print('switched')\n")
    ssh_fleet.give(script)
    host = ssh_fleet.hosts[2]
    version = host.put_file("current/VERSION", "1.0\n")
    ssh_fleet.authorize(key.with_suffix(".pub").read_text(),
                        f'restrict,command="/usr/bin/python3 {script}"', hosts=[host])

    config = client_config(tmp_path, "switch", key.read_text(), ssh_fleet.known_hosts_text)
    result = ssh(config, host, "2.0")

    assert (result.returncode, result.stdout) == (0, "switched\n"), result.stderr
    assert version.read_text() == "2.0\n"


def test_sftp_puts_and_gets_files_on_a_host(ssh_fleet, tmp_path):
    host = ssh_fleet.hosts[3]
    upload = tmp_path / "release.txt"
    upload.write_text("release 1.2.3\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {upload} {host.root}/release.txt\n"
                     f"get {host.root}/release.txt {tmp_path}/back.txt\n")
    result = subprocess.run(["sftp", "-F", str(ssh_fleet.ssh_config), "-P", str(host.port),
                             "-b", str(batch), f"{host.user}@{host.address}"],
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert (host.root / "release.txt").read_text() == "release 1.2.3\n"
    assert (host.root / "release.txt").stat().st_uid == pwd.getpwnam(host.user).pw_uid
    assert (tmp_path / "back.txt").read_text() == "release 1.2.3\n"


def _refuses(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stopping_a_fleet_ends_its_sessions_and_leaves_other_fleets_running(
        ssh_fleet, tmp_path):
    fleet = start_fleet(tmp_path / "other", 1, bastion=False)
    try:
        host = fleet.hosts[0]
        # A process the session detaches from itself (new session, parent gone).
        started = host.run('setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!')
        assert started.returncode == 0, started.stderr
        left_behind = psutil.Process(int(started.stdout))
        assert left_behind.is_running()
        listener = host.pid
    finally:
        fleet.stop()
    for pid in (left_behind.pid, listener):
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    assert _refuses(host.address, host.port)
    # The module's fleet shares the account and the addresses, and is untouched.
    assert ssh_fleet.hosts[0].run("true").returncode == 0


@pytest.fixture(autouse=True)
def _fleet_user_keys_only(ssh_fleet):
    """Each test starts with the fleet's key alone authorized."""
    ssh_fleet.reset_authorized()
