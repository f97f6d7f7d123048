"""The shared connection test of community.docker, over the pool: raw with unicode, copy and
fetch, pipelining on and off (issue 2)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from harness import pool

SHARED = """
- hosts: fleet
  gather_facts: false
  vars:
    remote: "/tmp/pooled-shared-{{ inventory_hostname }}-{{ pipelining }}"
  tasks:
    - name: raw with unicode
      ansible.builtin.raw: "echo 'ÿ ↑ 汉字 ✓'"
      register: raw
    - ansible.builtin.assert:
        that: "'ÿ ↑ 汉字 ✓' in raw.stdout"
    - name: a module with unicode arguments
      ansible.builtin.command: "echo 'ÿ ↑ 汉字 ✓'"
      register: cmd
    - ansible.builtin.assert:
        that: cmd.stdout == 'ÿ ↑ 汉字 ✓'
    - name: copy a file
      ansible.builtin.copy:
        src: "{{ src }}"
        dest: "{{ remote }}"
        mode: "0600"
    - name: fetch it back
      ansible.builtin.fetch:
        src: "{{ remote }}"
        dest: "{{ fetched }}/{{ inventory_hostname }}"
        flat: true
    - name: stdin of a pipelined module survives a large payload
      ansible.builtin.copy:
        content: "{{ 'x' * 300000 }}"
        dest: "{{ remote }}.big"
        mode: "0600"
    - ansible.builtin.file:
        path: "{{ item }}"
        state: absent
      loop: ["{{ remote }}", "{{ remote }}.big"]
"""


@pytest.mark.compat
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_shared_connection_behaviour(make_fleet, make_runner, tmp_path, pool_dir, collections_root, pipelining):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, pipelining=pipelining)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    result = runner.playbook(
        SHARED, inventory, "-e", f"src={src}", "-e", f"fetched={fetched}", "-e", f"pipelining={pipelining}"
    )
    assert result.rc == 0, result.output_tail()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    for host in fleet:
        assert hashlib.sha256((fetched / host.name).read_bytes()).hexdigest() == digest
        assert host.accepted_count("publickey") == 1
    stats = pool.stats(collections_root, pool_dir)["total"]
    assert stats["poolMisses"] == 2
    # Without pipelining every task also creates a temporary directory and copies the module.
    assert stats["poolHits"] >= (14 if pipelining else 30)


@pytest.mark.compat
def test_meta_reset_connection_closes_the_hosts_transports(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    playbook = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
    - ansible.builtin.meta: reset_connection
    - ansible.builtin.command: "true"
"""
    result = runner.playbook(playbook, inventory)
    assert result.rc == 0, result.output_tail()
    for host in fleet:
        assert host.accepted_count("publickey") == 2
    stats = pool.stats(collections_root, pool_dir)["total"]
    assert stats["evicted"] == 2 and stats["poolMisses"] == 4


def test_sftp_less_server_falls_back_to_cat(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1, sftp=False)
    runner = make_runner(fleet, pipelining=False)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    src = tmp_path / "small.txt"
    src.write_text("no sftp here\n")
    playbook = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        src: {src}
        dest: /tmp/pooled-nosftp.txt
        mode: "0600"
    - ansible.builtin.fetch:
        src: /tmp/pooled-nosftp.txt
        dest: {tmp_path}/back.txt
        flat: true
    - ansible.builtin.file:
        path: /tmp/pooled-nosftp.txt
        state: absent
"""
    result = runner.playbook(playbook, inventory)
    assert result.rc == 0, result.output_tail()
    assert (tmp_path / "back.txt").read_text() == "no sftp here\n"
    assert fleet.hosts[0].accepted_count("publickey") == 1
    assert re.search(
        r"the server has no SFTP subsystem \(.*\); transferring through cat", Path(pool_dir, "daemon.log").read_text()
    )


def test_host_key_checking_off_accepts_an_unknown_host(make_fleet, make_runner, tmp_path):
    fleet = make_fleet(count=1)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    runner = make_runner(empty)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    refused = runner.adhoc("fleet", "ansible.builtin.command", "true", inventory)
    assert refused.rc != 0 and "host key is unknown" in refused.stdout
    accepted = runner.adhoc(
        "fleet", "ansible.builtin.command", "true", inventory, env={"ANSIBLE_HOST_KEY_CHECKING": "False"}
    )
    assert accepted.rc == 0, accepted.output_tail()
    assert empty.read_text() == "", "host_key_checking=False must not record keys"


@pytest.mark.compat
def test_workers_start_the_daemon_and_ansible_playbook_never_does(make_fleet, make_runner, tmp_path, pool_dir):
    """Workers open the pool socket as soon as their options are set, so that a cold daemon starts
    while the module is built (every other test runs through that path). The guard that makes it
    safe: ansible-playbook itself, where ``meta: reset_connection`` runs, never starts a daemon
    just to find it empty; the first task's worker does."""
    fleet = make_fleet(count=1)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    only_meta = "- hosts: fleet\n  gather_facts: false\n  tasks:\n    - ansible.builtin.meta: reset_connection\n"
    result = runner.playbook(only_meta, inventory, "-vvv")
    assert result.rc == 0, result.output_tail()
    assert "RESET no pool daemon running" in result.stdout, result.output_tail()
    assert not (pool_dir / pool.PID_FILE).exists()
    result = runner.playbook(
        only_meta.replace("ansible.builtin.meta: reset_connection", "ansible.builtin.ping:"), inventory
    )
    assert result.rc == 0, result.output_tail()
    assert pool.daemon_pid(pool_dir) > 0
    assert fleet.hosts[0].accepted_count("publickey") == 1
