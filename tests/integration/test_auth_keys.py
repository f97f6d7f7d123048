"""Key logins: encrypted keys, ssh-agent, and credentials that never cross between transports (issue 3)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from harness import pool
from harness.sshd import ENCRYPTED_KEY_PASSPHRASE, is_root, needs_root, set_password, short_tempdir, wait_until

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: who
      ansible.builtin.command: id -un
      register: who
    - ansible.builtin.command: "true"
"""
NO_KEYS = {"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"}
NO_AGENT = {"SSH_AUTH_SOCK": None}
SECOND_USER = "healer-test2"
SECOND_PASSWORD = "healer-Test2-pw-2"


@pytest.mark.parametrize("how", ["ansible_password", "ansible_pooled_ssh_private_key_passphrase"])
def test_encrypted_key_with_its_passphrase(make_fleet, make_runner, tmp_path, pool_dir, how):
    fleet = make_fleet(count=1, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", key=fleet.encrypted_key, group_vars={how: ENCRYPTED_KEY_PASSPHRASE}
    )
    result = make_runner(fleet, extra_env=NO_KEYS).playbook(PLAY, inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    log = fleet.hosts[0].log_text()
    assert log.count("Accepted publickey for ") == 1 and "healer-client-enc" not in log.split("Accepted")[0]


def test_encrypted_key_without_passphrase_says_so(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", key=fleet.encrypted_key)
    result = make_runner(fleet, extra_env=NO_KEYS).playbook(PLAY, inventory, env=NO_AGENT)
    assert result.recap()["host1"]["unreachable"] == 1
    assert f"private key {fleet.encrypted_key} is encrypted" in result.stdout
    assert fleet.hosts[0].accepted_count() == 0


@pytest.fixture
def ssh_agent() -> Iterator[str]:
    """A real ssh-agent in the foreground (-D), stopped in teardown; yields its socket."""
    directory = short_tempdir("ha-")
    sock = str(directory / "agent.sock")
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(lambda: os.path.exists(sock), 10, what="ssh-agent socket")
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_ssh_agent_keys_of_the_worker(make_fleet, make_runner, tmp_path, pool_dir, ssh_agent):
    fleet = make_fleet(count=2)
    subprocess.run(
        ["ssh-add", str(fleet.client_key)],
        env=dict(os.environ, SSH_AUTH_SOCK=ssh_agent),
        check=True,
        capture_output=True,
        timeout=30,
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", use_key=False)
    assert "private_key_file" not in inventory.read_text()
    result = make_runner(fleet, extra_env=NO_KEYS).playbook(PLAY, inventory, env={"SSH_AUTH_SOCK": ssh_agent})
    assert result.rc == 0, result.output_tail()
    assert [h.accepted_count("publickey") for h in fleet] == [1, 1]
    # Without the agent the same inventory has nothing to log in with.
    fresh = make_runner(fleet, extra_env=NO_KEYS, pool=_other_pool_dir(tmp_path))
    try:
        denied = fresh.playbook(PLAY, inventory, env=NO_AGENT)
        assert denied.recap()["host1"]["unreachable"] == 1
        assert "no key or password to offer" in denied.stdout
    finally:
        from harness.ansible import stop_pool

        stop_pool(fresh.pool_dir)


def _other_pool_dir(tmp_path: Path) -> Path:
    path = short_tempdir("hp-")
    path.chmod(0o700)
    return path


def _ensure_second_user() -> None:
    needs_root("creating a second login user")
    try:
        pwd.getpwnam(SECOND_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", SECOND_USER], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode not in (0, 9):
            raise RuntimeError(proc.stderr) from None
    set_password(SECOND_USER, SECOND_PASSWORD)  # also unlocks the account (UsePAM no refuses locked ones)


@pytest.mark.skipif(not is_root(), reason="needs root: a second local user")
def test_two_users_on_one_host_get_two_transports(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    _ensure_second_user()
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - {{name: first, ansible.builtin.command: id -un, register: a}}
    - {{name: second, ansible.builtin.command: id -un, register: b, remote_user: {SECOND_USER},
        vars: {{ansible_user: {SECOND_USER}}}}}
    - {{name: third, ansible.builtin.command: id -un, register: c}}
    - {{name: fourth, ansible.builtin.command: id -un, register: d, vars: {{ansible_user: {SECOND_USER}}}}}
    - ansible.builtin.assert:
        that: [a.stdout == '{fleet.user}', b.stdout == '{SECOND_USER}', c.stdout == '{fleet.user}',
               d.stdout == '{SECOND_USER}']
"""
    result = make_runner(fleet).playbook(play, inventory)
    assert result.rc == 0, result.output_tail()
    log = host.log_text()
    assert log.count(f"Accepted publickey for {fleet.user} ") == 1
    assert log.count(f"Accepted publickey for {SECOND_USER} ") == 1
    users = sorted(t["user"] for t in pool.transports(collections_root, pool_dir))
    assert users == sorted([fleet.user, SECOND_USER])


def test_same_user_with_two_keys_gets_two_transports(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=1, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"
      vars:
        ansible_ssh_private_key_file: {fleet.encrypted_key}
        ansible_pooled_ssh_private_key_passphrase: {ENCRYPTED_KEY_PASSPHRASE}
    - ansible.builtin.command: "true"
"""
    result = make_runner(fleet, extra_env=NO_KEYS).playbook(play, inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    assert fleet.hosts[0].accepted_count("publickey") == 2
    stats = pool.stats(collections_root, pool_dir)["hosts"]["host1"]
    assert stats["poolMisses"] == 2 and stats["poolHits"] == 1 and stats["totalConnections"] == 2, stats
