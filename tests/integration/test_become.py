"""Privilege escalation over pooled transports: sudo and su, prompts, failures, deadlines (issue 3).

Needs root: the tests write sudoers drop-ins (removed in teardown) and set login passwords.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from harness import pool
from harness.sshd import DEFAULT_PASSWORD, is_root, needs_root, set_password

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: sudoers drop-ins and login passwords")

SECOND_USER = "healer-test2"
SECOND_PASSWORD = "healer-Test2-pw-2"

ID_PLAY = """
- hosts: fleet
  gather_facts: false
  become: true
  tasks:
    - name: whoami
      ansible.builtin.command: id -u
      register: who
"""


def ensure_sudo() -> None:
    """sudo and su are what the tests escalate with; install sudo when missing (root only)."""
    if not os.access("/usr/bin/sudo", os.X_OK):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], env=env, check=True, timeout=600, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "sudo"],
            env=env,
            check=True,
            timeout=900,
            capture_output=True,
        )


def ensure_user(name: str, password: str) -> None:
    """A second local account (created once, kept, as the harness does with healer-test)."""
    needs_root("creating users")
    try:
        pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", name], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode not in (0, 9):
            raise RuntimeError(f"useradd {name}: {proc.stderr}") from None
    set_password(name, password)


@pytest.fixture
def sudoers() -> Iterator[Callable[[str], Path]]:
    """Write sudoers drop-ins (validated by visudo); every one is removed in teardown."""
    ensure_sudo()
    written = []

    def write(text: str) -> Path:
        path = Path("/etc/sudoers.d") / f"healer-pooled-{uuid.uuid4().hex[:10]}"
        tmp = path.with_name("." + path.name)  # sudo ignores names with a dot
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-c", "-q", "-f", str(tmp)], check=True, timeout=30, capture_output=True)
        written.append(path)
        tmp.rename(path)
        return path

    try:
        yield write
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _password_rule(user: str) -> str:
    # timestamp_timeout=0: sudo asks every time, so no test depends on another's cached credentials.
    return f"Defaults:{user} timestamp_timeout=0\n{user} ALL=(ALL) ALL"


@pytest.fixture
def fleet1(make_fleet):
    fleet = make_fleet(count=1)
    set_password(fleet.user, DEFAULT_PASSWORD)
    return fleet


@pytest.mark.compat
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_sudo_with_a_password(fleet1, make_runner, sudoers, tmp_path, pool_dir, collections_root, pipelining):
    sudoers(_password_rule(fleet1.user))
    inventory = fleet1.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_become_password": DEFAULT_PASSWORD}
    )
    runner = make_runner(fleet1, pipelining=pipelining)
    run = runner.run_json(ID_PLAY, inventory, "-vvv")
    assert run.rc == 0, run.result.output_tail()
    assert run.task("host1", "whoami")["stdout"] == "0"
    # Pipelining really was on (no module file copied) or off (copied).
    puts = [ln for ln in run.result.stdout.splitlines() if "PUT " in ln]
    assert (not puts) if pipelining else puts, puts
    assert fleet1.hosts[0].accepted_count("publickey") == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_sudo_without_a_password(fleet1, make_runner, sudoers, tmp_path, pool_dir, pipelining):
    sudoers(f"{fleet1.user} ALL=(ALL) NOPASSWD: ALL")
    inventory = fleet1.write_inventory(tmp_path / "inventory.yml")
    run = make_runner(fleet1, pipelining=pipelining).run_json(ID_PLAY, inventory)
    assert run.rc == 0, run.result.output_tail()
    assert run.task("host1", "whoami")["stdout"] == "0"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_wrong_sudo_password_fails_fast_and_clearly(fleet1, make_runner, sudoers, tmp_path, pool_dir, pipelining):
    sudoers(_password_rule(fleet1.user))
    inventory = fleet1.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_become_password": "not-the-password"}
    )
    run = make_runner(fleet1, pipelining=pipelining).run_json(ID_PLAY, inventory)
    assert run.rc == 2, run.result.output_tail()
    res = run.task("host1", "whoami")
    assert res.get("failed") and not res.get("unreachable"), res
    assert "Incorrect sudo password" in res["msg"], res
    assert "timed out" not in res["msg"]


def test_missing_sudo_password(fleet1, make_runner, sudoers, tmp_path, pool_dir):
    sudoers(_password_rule(fleet1.user))
    inventory = fleet1.write_inventory(tmp_path / "inventory.yml")
    run = make_runner(fleet1).run_json(ID_PLAY, inventory)
    res = run.task("host1", "whoami")
    assert res.get("failed") and "Missing sudo password" in res["msg"], res


def test_a_prompt_that_never_matches_times_out(fleet1, make_runner, tmp_path, pool_dir):
    # A "sudo" that asks in words Ansible does not recognise and then waits for ever.
    fake = fleet1.dir / "fake-sudo"
    fake.write_text("#!/bin/sh\nprintf 'Say it: '\nread answer\n", encoding="utf-8")
    fake.chmod(0o755)
    inventory = fleet1.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={
            "ansible_become_password": DEFAULT_PASSWORD,
            "ansible_become_exe": str(fake),
            "ansible_pooled_ssh_timeout": 3,
        },
    )
    run = make_runner(fleet1).run_json(ID_PLAY, inventory)
    res = run.task("host1", "whoami")
    assert res.get("unreachable"), res  # as with the ssh plugin (tests/integration/test_become_semantics.py)
    assert "timed out waiting for privilege escalation prompt" in res["msg"], res
    assert "Say it:" in res["msg"]
    # The pool is fine afterwards: the abandoned channel was closed, the transport reused.
    again = make_runner(fleet1).run_json(ID_PLAY.replace("become: true", "become: false"), inventory)
    assert again.rc == 0, again.result.output_tail()


def test_su_with_a_password(fleet1, make_runner, tmp_path, pool_dir):
    # Ansible's su plugin never pipelines; becoming an unprivileged user then needs readable temp
    # files (no setfacl here): Ansible's documented switch.
    ensure_user(SECOND_USER, SECOND_PASSWORD)
    inventory = fleet1.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={
            "ansible_become_method": "su",
            "ansible_become_user": SECOND_USER,
            "ansible_become_password": SECOND_PASSWORD,
            "ansible_shell_allow_world_readable_temp": True,
        },
    )
    play = ID_PLAY.replace("id -u", "id -un")
    run = make_runner(fleet1).run_json(play, inventory)
    assert run.rc == 0, run.result.output_tail()
    assert run.task("host1", "whoami")["stdout"] == SECOND_USER


def test_su_wrong_and_missing_password(fleet1, make_runner, tmp_path, pool_dir):
    ensure_user(SECOND_USER, SECOND_PASSWORD)
    base = {
        "ansible_become_method": "su",
        "ansible_become_user": SECOND_USER,
        "ansible_shell_allow_world_readable_temp": True,
    }
    wrong = fleet1.write_inventory(tmp_path / "wrong.yml", group_vars=dict(base, ansible_become_password="nope"))
    res = make_runner(fleet1).run_json(ID_PLAY, wrong).task("host1", "whoami")
    assert res.get("failed") and "Incorrect su password" in res["msg"], res
    missing = fleet1.write_inventory(tmp_path / "missing.yml", group_vars=base)
    res = make_runner(fleet1).run_json(ID_PLAY, missing).task("host1", "whoami")
    assert res.get("failed") and "Missing su password" in res["msg"], res


@pytest.mark.compat
def test_become_uses_the_same_pooled_transport(fleet1, make_runner, sudoers, tmp_path, pool_dir, collections_root):
    sudoers(_password_rule(fleet1.user))
    inventory = fleet1.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_become_password": DEFAULT_PASSWORD}
    )
    play = """
- hosts: fleet
  gather_facts: false
  tasks:
    - {name: plain, ansible.builtin.command: id -u, register: a}
    - {name: root, ansible.builtin.command: id -u, become: true, register: b}
    - {name: plain again, ansible.builtin.command: id -u, register: c}
    - ansible.builtin.assert:
        that: [a.stdout != '0', b.stdout == '0', c.stdout == a.stdout]
"""
    run = make_runner(fleet1).playbook(play, inventory)
    assert run.rc == 0, run.output_tail()
    stats = pool.stats(collections_root, pool_dir)["hosts"]["host1"]
    assert stats["poolMisses"] == 1 and stats["totalConnections"] == 1, stats
    assert fleet1.hosts[0].accepted_count("publickey") == 1
