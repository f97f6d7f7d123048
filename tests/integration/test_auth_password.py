"""Password and keyboard-interactive logins, pooled; wrong passwords fail once and are not retried (issue 3)."""

from __future__ import annotations

import json
import re

import pytest
from harness import pool
from harness.sshd import DEFAULT_PASSWORD, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: login passwords")

FOUR_TASKS = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
    - ansible.builtin.shell: echo two
    - ansible.builtin.copy: {content: "x\\n", dest: "~/pw-{{ inventory_hostname }}", mode: "0600"}
    - ansible.builtin.file: {path: "~/pw-{{ inventory_hostname }}", state: absent}
"""

#: No key may be offered: the runs must prove that the password (or nothing) logs in.
NO_KEYS = {"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"}
NO_AGENT = {"SSH_AUTH_SOCK": None}


def unreachable_message(stdout: str, host: str) -> str:
    line = next(ln for ln in stdout.splitlines() if f"[{host}]: UNREACHABLE!" in ln)
    return json.loads(line.split("=>", 1)[1])["msg"]


def test_password_only_host_logs_in_once_and_reuses_the_transport(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=2, password=DEFAULT_PASSWORD, extra_config=["PubkeyAuthentication no"])
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", use_key=False, group_vars={"ansible_password": DEFAULT_PASSWORD}
    )
    runner = make_runner(fleet, extra_env=NO_KEYS)
    result = runner.playbook(FOUR_TASKS, inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    assert all(result.recap()[h.name]["ok"] == 4 for h in fleet), result.recap()
    for host in fleet:
        assert host.accepted_count("password") == 1, host.log_tail()
        assert host.accepted_count() == 1
    stats = pool.stats(collections_root, pool_dir)["hosts"]
    for host in fleet:
        assert stats[host.name]["poolMisses"] == 1 and stats[host.name]["poolHits"] >= 3, stats


def test_keyboard_interactive_password(make_fleet, make_runner, tmp_path, pool_dir):
    # sshd answers keyboard-interactive with passwords only through PAM (with UsePAM no it has no
    # password device on Linux), so this host runs with PAM.
    fleet = make_fleet(
        count=1,
        password=DEFAULT_PASSWORD,
        extra_config=[
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication yes",
            "UsePAM yes",
            "PubkeyAuthentication no",
        ],
    )
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", use_key=False, group_vars={"ansible_password": DEFAULT_PASSWORD}
    )
    result = make_runner(fleet, extra_env=NO_KEYS).playbook(FOUR_TASKS, inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    assert len(re.findall(r"Accepted keyboard-interactive(/pam)? for ", host.log_text())) == 1, host.log_tail()
    assert host.accepted_count("password") == 0


def test_wrong_password_is_one_clear_line_and_not_retried(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=1, password=DEFAULT_PASSWORD, extra_config=["PubkeyAuthentication no", "MaxAuthTries 2"])
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", use_key=False, group_vars={"ansible_password": "wrong-password"}
    )
    runner = make_runner(fleet, extra_env=NO_KEYS)
    play = """
- hosts: fleet
  gather_facts: false
  ignore_unreachable: true
  tasks:
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"
"""
    result = runner.playbook(play, inventory, env=NO_AGENT, timeout=120)
    assert result.recap()["host1"]["ignored"] == 3, result.output_tail()
    first = unreachable_message(result.stdout, "host1")
    assert f"{host.address}:{host.port}: authentication failed for user '{fleet.user}'" in first, first
    assert "\n" not in first and "Traceback" not in result.stdout + result.stderr
    # Three tasks, one attempt at the server: the next two were answered from the remembered failure.
    messages = [
        json.loads(ln.split("=>", 1)[1])["msg"] for ln in result.stdout.splitlines() if "[host1]: UNREACHABLE!" in ln
    ]
    assert len(messages) == 3 and all("authentication failed" in m for m in messages), messages
    assert sum("not retried" in m and "remembered for 30s" in m for m in messages) == 2, messages
    failures = len(re.findall(r"Failed (password|none|keyboard-interactive\S*) for ", host.log_text()))
    assert 1 <= failures <= 3 < 5, host.log_tail()  # under MaxAuthTries and fail2ban's maxretry
    # The pool counts three failed connects; only the first reached the server (one handshake logged).
    assert pool.stats(collections_root, pool_dir)["hosts"]["host1"]["connectFailures"] == 3
    assert host.log_text().count("Connection closed by authenticating user") == 1, host.log_tail()
    # A second playbook right away does not knock again either.
    again = runner.playbook(play, inventory, env=NO_AGENT, timeout=120)
    assert "not retried" in unreachable_message(again.stdout, "host1")
    assert len(re.findall(r"Failed (password|none|keyboard-interactive\S*) for ", host.log_text())) == failures


def test_changed_inventory_password_never_gets_the_old_transport(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=1, password=DEFAULT_PASSWORD, extra_config=["PubkeyAuthentication no"])
    host = fleet.hosts[0]
    good = fleet.write_inventory(
        tmp_path / "good.yml", use_key=False, group_vars={"ansible_password": DEFAULT_PASSWORD}
    )
    other = fleet.write_inventory(
        tmp_path / "other.yml", use_key=False, group_vars={"ansible_password": "another-password"}
    )
    runner = make_runner(fleet, extra_env=NO_KEYS)
    assert runner.playbook(FOUR_TASKS, good, env=NO_AGENT).rc == 0
    assert host.accepted_count("password") == 1
    # Another password for the same host and user: a fresh transport is opened (and fails),
    # the one authenticated with the first password is not handed out.
    changed = runner.playbook(FOUR_TASKS, other, env=NO_AGENT)
    assert changed.recap()["host1"]["unreachable"] == 1, changed.output_tail()
    stats = pool.stats(collections_root, pool_dir)["hosts"]["host1"]
    assert stats["poolMisses"] == 1 and stats["connectFailures"] == 1 and stats["totalConnections"] == 1, stats
    # Back to the first password: the pooled transport serves it, no new login.
    assert runner.playbook(FOUR_TASKS, good, env=NO_AGENT).rc == 0
    assert host.accepted_count("password") == 1
    assert pool.stats(collections_root, pool_dir)["hosts"]["host1"]["poolMisses"] == 1
