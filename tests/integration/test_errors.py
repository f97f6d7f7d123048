"""Bad input gets one clear UNREACHABLE line per host, and the other hosts carry on (issue 2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.frames import PROTOCOL_VERSION, socket_name
from harness import pool
from harness.sshd import generate_key, is_root, needs_root

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: echo fine
"""


def _free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.compat
def test_each_bad_host_fails_alone_with_one_clear_line(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=4)
    good, changed, unknown, other = fleet.hosts
    wrong_key = generate_key(tmp_path / "wrong_key")
    # known_hosts: 'changed' has a different key on record, 'unknown' is missing.
    other_key = generate_key(tmp_path / "other_host_key")
    lines = [
        good.host_key_line(),
        other.host_key_line(),
        f"[{changed.address}]:{changed.port} {other_key.with_suffix('.pub').read_text().split()[0]} "
        f"{other_key.with_suffix('.pub').read_text().split()[1]}",
    ]
    fleet.known_hosts.write_text("\n".join(lines) + "\n")
    closed_port = _free_closed_port()
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        host_vars={
            # 'other' serves three bad logins under three inventory names.
            "host4": {"ansible_ssh_private_key_file": str(wrong_key)},
        },
    )
    extra = tmp_path / "extra.yml"
    extra.write_text(f"""
fleet:
  hosts:
    nouser:
      ansible_host: {other.address}
      ansible_port: {other.port}
      ansible_user: no-such-user
      ansible_ssh_private_key_file: {fleet.client_key}
    closedport:
      ansible_host: 127.0.0.1
      ansible_port: {closed_port}
      ansible_user: {fleet.user}
    badname:
      ansible_host: no..such..host
      ansible_port: 22
      ansible_user: {fleet.user}
""")
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"})
    result = runner.playbook(PLAY, inventory, "-i", str(extra), env={"SSH_AUTH_SOCK": None})
    assert result.rc == 4, result.output_tail()
    recap = result.recap()
    assert recap["host1"]["ok"] == 1 and recap["host1"]["unreachable"] == 0, recap
    expected = {
        "host2": (changed, "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "host3": (unknown, "host key is unknown"),
        "host4": (other, "authentication failed for user"),
        "nouser": (other, "authentication failed for user 'no-such-user'"),
        "closedport": (None, "connection refused"),
        "badname": (None, "cannot resolve host name"),
    }
    out = result.stdout + result.stderr
    for name, (host, cause) in expected.items():
        assert recap[name]["unreachable"] == 1, (name, recap)
        where = (
            f"{host.address}:{host.port}"
            if host
            else (f"127.0.0.1:{closed_port}" if name == "closedport" else "no..such..host:22")
        )
        line = next((ln for ln in out.splitlines() if f"[{name}]: UNREACHABLE!" in ln), None)
        assert line is not None, out
        message = json.loads(line.split("=>", 1)[1])["msg"]
        assert where in message and cause in message, message
        assert "\n" not in message
    assert "Traceback" not in out
    # The changed key names the file and line, and shows both fingerprints.
    changed_msg = next(ln for ln in out.splitlines() if "[host2]: UNREACHABLE!" in ln)
    assert f"{fleet.known_hosts}:3" in changed_msg and changed_msg.count("SHA256:") == 2
    # Nothing was sent to the hosts whose keys did not check out; one bounded attempt elsewhere.
    assert changed.accepted_count() == 0 and "Failed" not in changed.log_text()
    assert unknown.accepted_count() == 0
    assert good.accepted_count("publickey") == 1
    # The pool still serves the good host, and a second run does not retry storms.
    again = runner.playbook(PLAY, inventory, "-i", str(extra), env={"SSH_AUTH_SOCK": None})
    assert again.recap()["host1"]["ok"] == 1
    assert pool.stats(collections_root, pool_dir)["hosts"]["host1"]["poolMisses"] == 1


def test_malformed_option_names_the_option(fleet, runner, tmp_path):
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", hosts=fleet.hosts[:1], group_vars={"ansible_pooled_ssh_max_connections": 0}
    )
    result = runner.playbook(PLAY, inventory)
    assert result.rc != 0
    out = result.stdout + result.stderr
    assert "max_connections: must be at least 1" in out, out
    assert "Traceback" not in out


def test_exhausted_pool_reports_host_port_and_max(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    workers = "\n".join(f"        w{i}: {{ansible_connection: local}}" for i in range(4))
    (tmp_path / "workers.yml").write_text(f"all:\n  children:\n    workers:\n      hosts:\n{workers}\n")
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(
        fleet,
        extra_env={
            "ANSIBLE_FORKS": "4",
            "ANSIBLE_POOLED_SSH_MAX_CONNECTIONS": "1",
            "ANSIBLE_POOLED_SSH_MAX_CHANNELS": "1",
            "ANSIBLE_POOLED_SSH_POOL_WAIT_TIMEOUT": "1",
        },
    )
    playbook = """
- hosts: workers
  gather_facts: false
  tasks:
    - ansible.builtin.command: sleep 4
      delegate_to: host1
      vars: {ansible_connection: healer.pooled_ssh.pooled_ssh}
"""
    result = runner.playbook(playbook, inventory, "-i", str(tmp_path / "workers.yml"))
    recap = result.recap()
    ok = [w for w in recap if recap[w]["ok"] == 1]
    exhausted = [w for w in recap if recap[w]["unreachable"] == 1]
    assert len(ok) == 1 and len(exhausted) == 3, recap
    message = f"Connection pool exhausted for host1:{host.port} (max: 1)"
    assert sum(1 for ln in result.stdout.splitlines() if "UNREACHABLE!" in ln and message in ln) == 3
    assert "Traceback" not in result.stdout + result.stderr
    assert "exhausted key=" in (Path(pool_dir) / "daemon.log").read_text()
    # No leak: the pool serves the next request at once.
    after = runner.playbook(
        playbook.replace("sleep 4", "'true'"), inventory, "-i", str(tmp_path / "workers.yml"), "--limit", "w0"
    )
    assert after.rc == 0, after.output_tail()


CLIENT = """
import socket, struct, sys, json
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-failed", e.errno); sys.exit(0)
hello = json.dumps({"op": "hello", "version": VERSION}).encode()
try:
    s.sendall(b"HPS" + bytes([VERSION]) + struct.pack("!II", len(hello), 0) + hello)
    data = s.recv(100)
except OSError:
    data = b""
print("closed" if not data else "reply %d" % len(data))
""".replace("VERSION", str(PROTOCOL_VERSION))


def test_another_uid_is_refused(fleet, runner, tmp_path, pool_dir):
    needs_root("switching to another uid needs root")
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", hosts=fleet.hosts[:1])
    assert runner.playbook(PLAY, inventory).rc == 0
    sock = str(Path(pool_dir) / socket_name())
    import pwd

    user = pwd.getpwnam(fleet.user)

    def as_other(*args: str) -> str:
        def demote() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        return subprocess.run(
            [fleet.python, "-c", CLIENT, *args],
            preexec_fn=demote,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        ).stdout

    # The 0700 directory keeps the other user out...
    assert as_other(sock).startswith("connect-failed 13"), "EACCES expected"
    # ...and with the directory and the (0600) socket opened up, SO_PEERCRED still refuses it.
    os.chmod(pool_dir, 0o711)
    os.chmod(sock, 0o666)
    try:
        assert as_other(sock).strip() == "closed"
    finally:
        os.chmod(pool_dir, 0o700)
        os.chmod(sock, 0o600)
    assert f"refused a client with uid {user.pw_uid}" in (Path(pool_dir) / "daemon.log").read_text()
    # The daemon still serves its owner.
    assert runner.playbook(PLAY, inventory).rc == 0


def test_pool_dir_with_wrong_mode_is_refused(fleet, runner, tmp_path, pool_dir):
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", hosts=fleet.hosts[:1])
    os.chmod(pool_dir, 0o755)
    try:
        result = runner.playbook(PLAY, inventory)
    finally:
        os.chmod(pool_dir, 0o700)
    assert result.recap()["host1"]["unreachable"] == 1
    assert f"pool directory {pool_dir} has mode 0755" in result.stdout
    assert not (Path(pool_dir) / socket_name()).exists()


@pytest.mark.skipif(not is_root(), reason="needs root: chown to another user")
def test_pool_dir_owned_by_another_user_is_refused(fleet, runner, tmp_path, pool_dir):
    import pwd

    inventory = fleet.write_inventory(tmp_path / "inventory.yml", hosts=fleet.hosts[:1])
    os.chown(pool_dir, pwd.getpwnam(fleet.user).pw_uid, -1)
    try:
        result = runner.playbook(PLAY, inventory)
    finally:
        os.chown(pool_dir, 0, -1)
    assert result.recap()["host1"]["unreachable"] == 1
    assert "is owned by uid" in result.stdout
