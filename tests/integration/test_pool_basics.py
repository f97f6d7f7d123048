"""The pool's promises, with real ansible-playbook, real sshd and real Paramiko (issue 2)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from harness import pool
from harness.sshd import wait_until

SEVEN_TASKS = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: command
      ansible.builtin.command: uname -s
    - name: shell with a pipe
      ansible.builtin.shell: echo pooled | tr a-z A-Z
      register: upper
    - name: the pipe worked
      ansible.builtin.assert:
        that: upper.stdout == 'POOLED'
    - name: copy content
      ansible.builtin.copy:
        content: "hello {{ inventory_hostname }}\\n"
        dest: "/tmp/pooled-{{ inventory_hostname }}.txt"
        mode: "0644"
    - name: stat it
      ansible.builtin.stat:
        path: "/tmp/pooled-{{ inventory_hostname }}.txt"
    - name: raw with unicode
      ansible.builtin.raw: echo 'héllo wörld ✓'
      register: raw
    - name: file absent
      ansible.builtin.file:
        path: "/tmp/pooled-{{ inventory_hostname }}.txt"
        state: absent
"""


def accepted(fleet) -> dict:
    return {h.name: h.accepted_count("publickey") for h in fleet}


@pytest.mark.compat
def test_seven_tasks_five_hosts_one_handshake_per_host(fleet, runner, tmp_path, collections_root, pool_dir):
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    first = runner.playbook(SEVEN_TASKS, inventory)
    assert first.rc == 0, first.output_tail()
    recap = first.recap()
    assert all(recap[h.name]["ok"] == 7 and recap[h.name]["failed"] == 0 for h in fleet), recap
    assert (
        "héllo wörld ✓"
        in runner.run_json(
            "- hosts: fleet\n  gather_facts: false\n  tasks:\n    - raw: echo 'héllo wörld ✓'\n", inventory
        ).task("host1", "raw")["stdout"]
    )
    assert accepted(fleet) == {h.name: 1 for h in fleet}

    stats = pool.stats(collections_root, pool_dir)
    assert stats["total"]["poolMisses"] == 5
    assert stats["total"]["poolHits"] >= 30
    for h in fleet:
        assert stats["hosts"][h.name]["poolMisses"] == 1
        assert stats["hosts"][h.name]["totalConnections"] == 1

    # A second playbook within the idle timeout: no handshake at all.
    second = runner.playbook(SEVEN_TASKS, inventory)
    assert second.rc == 0, second.output_tail()
    assert accepted(fleet) == {h.name: 1 for h in fleet}
    assert pool.stats(collections_root, pool_dir)["total"]["poolMisses"] == 5


def test_twenty_forks_on_one_host_stay_within_max_connections(
    make_fleet, make_runner, tmp_path, collections_root, pool_dir
):
    fleet = make_fleet(count=1)
    target = fleet.hosts[0]
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    # Twenty controller-side hosts fan in on one target with delegate_to, twenty forks at once.
    workers = "\n".join(f"        w{i}: {{ansible_connection: local}}" for i in range(20))
    (tmp_path / "workers.yml").write_text(f"all:\n  children:\n    workers:\n      hosts:\n{workers}\n")
    playbook = """
- hosts: workers
  gather_facts: false
  tasks:
    - name: one second on the shared target
      ansible.builtin.command: sleep 1
      delegate_to: host1
      vars:
        ansible_connection: healer.pooled_ssh.pooled_ssh
    - name: and a quick one
      ansible.builtin.command: "echo {{ inventory_hostname }}"
      delegate_to: host1
      vars:
        ansible_connection: healer.pooled_ssh.pooled_ssh
"""
    runner = make_runner(
        fleet,
        extra_env={
            "ANSIBLE_FORKS": "20",
            "SSH_POOL_MAX_CONNECTIONS": "2",  # the origin's name for max_connections
            "ANSIBLE_POOLED_SSH_MAX_CHANNELS": "4",
        },
    )
    result = runner.playbook(playbook, inventory, "-i", str(tmp_path / "workers.yml"))
    assert result.rc == 0, result.output_tail()
    recap = result.recap()
    assert all(recap[f"w{i}"]["ok"] == 2 and recap[f"w{i}"]["unreachable"] == 0 for i in range(20)), recap
    stats = pool.stats(collections_root, pool_dir)["hosts"]["host1"]
    assert 1 <= stats["peakConnections"] <= 2
    assert stats["poolMisses"] <= 2
    assert target.accepted_count("publickey") == stats["poolMisses"]
    assert stats["poolHits"] + stats["poolMisses"] >= 40
    assert stats["waits"] > 0, "with 8 channel slots for 20 forks some requests must have queued"
    # Twenty workers raced to start the pool: exactly one daemon ever ran.
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count(" started pid=") == 1, log


KILL_DAEMON_BETWEEN_TASKS = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
    - name: kill the pool daemon with SIGKILL
      ansible.builtin.shell: "kill -9 $(cat {pool_dir}/{pid_file}) && echo killed"
      delegate_to: localhost
      connection: local
      run_once: true
    - name: the next task starts a new daemon
      ansible.builtin.command: "echo after"
      register: after
    - ansible.builtin.assert:
        that: after.stdout == 'after'
"""


@pytest.mark.compat
def test_daemon_sigkill_between_tasks(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = runner.playbook(KILL_DAEMON_BETWEEN_TASKS.format(pool_dir=pool_dir, pid_file=pool.PID_FILE), inventory)
    assert result.rc == 0, result.output_tail()
    assert result.recap()["host1"]["ok"] == 4 and result.recap()["host2"]["ok"] == 3, result.recap()
    log = (Path(pool_dir) / "daemon.log").read_text()
    started = [line for line in log.splitlines() if " started pid=" in line]
    assert len(started) == 2, log  # the first daemon, then the one the next task started
    first_pid = int(started[0].split(" started pid=")[1].split()[0])
    assert pool.daemon_pid(pool_dir) != first_pid
    # Each host handshook once with each daemon.
    assert [h.accepted_count("publickey") for h in fleet] == [2, 2]


@pytest.mark.compat
def test_sshd_restarted_between_tasks_reconnects(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    host = fleet.host("host1")
    # A full restart: the listener and the session processes that carried our transport.
    host.kill_sessions()
    host.restart()
    result = runner.adhoc("fleet", "ansible.builtin.command", "echo back", inventory)
    assert result.rc == 0, result.output_tail()
    assert "back" in result.stdout
    assert host.accepted_count("publickey") == 2
    assert fleet.host("host2").accepted_count("publickey") == 1
    stats = pool.stats(collections_root, pool_dir)["hosts"]
    assert stats["host1"]["poolMisses"] == 2
    assert stats["host2"]["poolMisses"] == 1


def test_idle_transport_is_closed_after_idle_timeout(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=1)
    # The origin's variable, in milliseconds, is honoured as an alias of idle_timeout.
    runner = make_runner(
        fleet, extra_env={"SSH_POOL_IDLE_TIMEOUT_MS": "2000", "ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT": "600"}
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    assert pool.stats(collections_root, pool_dir)["total"]["totalConnections"] == 1

    def closed() -> bool:
        return pool.stats(collections_root, pool_dir)["total"]["closedIdle"] == 1

    wait_until(closed, timeout=30, interval=0.25, what="the idle transport to be closed")
    assert "closed_idle count=1" in (Path(pool_dir) / "daemon.log").read_text()
    total = pool.stats(collections_root, pool_dir)["total"]
    assert total["totalConnections"] == 0 and total["idleConnections"] == 0
    host = fleet.hosts[0]
    # sshd agrees: the client closed the connection.
    host.wait_for_log(r"(Received disconnect|Disconnected from user|Connection closed by)", timeout=10)
    # And the next task opens a new transport.
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    assert host.accepted_count("publickey") == 2


def test_daemon_exits_after_holding_nothing(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    runner = make_runner(
        fleet, extra_env={"ANSIBLE_POOLED_SSH_IDLE_TIMEOUT": "1", "ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT": "1"}
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    pid = pool.daemon_pid(pool_dir)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, interval=0.25, what="the daemon to exit")
    assert not (Path(pool_dir) / pool.PID_FILE).exists()
    assert "held nothing" in (Path(pool_dir) / "daemon.log").read_text()


def test_sigterm_closes_every_transport(fleet, runner, tmp_path, pool_dir, collections_root):
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    pid = pool.daemon_pid(pool_dir)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, interval=0.1, what="the daemon to exit")
    assert "closed 5 transports" in (Path(pool_dir) / "daemon.log").read_text()
    for host in fleet:
        host.wait_for_log(r"(Received disconnect|Disconnected from user|Connection closed by)", timeout=10)
