"""``pool_info`` only reads; ``pool`` flushes and stops (check mode too); pool_info's old options warn."""

from __future__ import annotations

import json
from pathlib import Path

from harness import pool
from harness.sshd import wait_until

LOCAL = """
- hosts: localhost
  gather_facts: false
  connection: local
  tasks:
{tasks}
    - ansible.builtin.copy:
        content: "{{{{ {{'r': r}} | to_json }}}}"
        dest: "{{{{ out }}}}"
        mode: "0600"
      check_mode: false
"""


#: Transports and the daemon outlive the slowest test: what a test sees changes only by what it does.
LONG_LIVED = {"ANSIBLE_POOLED_SSH_IDLE_TIMEOUT": "3600", "ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT": "3600"}


def _local(runner, tmp_path: Path, inventory: Path, task: str, *args: str) -> dict:
    """Run one controller task (registered as ``r``) and return its result."""
    out = tmp_path / "result.json"
    body = "    - " + task.replace("\n", "\n      ") + "\n      register: r"
    result = runner.playbook(LOCAL.format(tasks=body), inventory, "-e", f"out={out}", *args)
    assert result.rc == 0, result.output_tail()
    data = json.loads(out.read_text())["r"]
    data["_output"] = result.stdout + result.stderr
    return data


def _transports(collections_root, pool_dir) -> list:
    return sorted((t["host"], t["key"], t["id"]) for t in pool.transports(collections_root, pool_dir))


def _warm(runner, fleet, tmp_path: Path) -> Path:
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    return inventory


def test_pool_info_changes_nothing(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, extra_env=LONG_LIVED)
    inventory = _warm(runner, fleet, tmp_path)
    before = _transports(collections_root, pool_dir)
    assert [h for h, _unused, _unused2 in before] == ["host1", "host2"]
    info = _local(runner, tmp_path, inventory, "healer.pooled_ssh.pool_info:")
    assert info["changed"] is False and info["running"] is True
    assert sorted((t["host"], t["key"], t["id"]) for t in info["transports"]) == before
    assert _transports(collections_root, pool_dir) == before
    assert "DEPRECATION" not in info["_output"]
    # The same hosts again: the transports it listed are the ones still serving.
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    assert all(h.accepted_count("publickey") == 1 for h in fleet)


def test_pool_flushes_one_host_in_check_mode_then_for_real(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, extra_env=LONG_LIVED)
    inventory = _warm(runner, fleet, tmp_path)
    before = _transports(collections_root, pool_dir)
    task = "healer.pooled_ssh.pool: {state: flushed, host: host1}"

    dry = _local(runner, tmp_path, inventory, task, "--check")
    assert dry["changed"] is True and dry["closed"] == 1, dry
    assert [t["host"] for t in dry["transports"]] == ["host1"]
    assert dry["msg"] == "would close 1 transport of host1"
    assert _transports(collections_root, pool_dir) == before

    done = _local(runner, tmp_path, inventory, task)
    assert done["changed"] is True and done["closed"] == 1 and done["running"] is True, done
    assert [h for h, _unused, _unused2 in _transports(collections_root, pool_dir)] == ["host2"]

    again = _local(runner, tmp_path, inventory, task)
    assert again["changed"] is False and again["closed"] == 0, again

    # host1 logs in anew; host2 still uses its first transport.
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    assert [h.accepted_count("publickey") for h in fleet] == [2, 1]


def test_pool_flushes_everything_when_no_host_is_named(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, extra_env=LONG_LIVED)
    inventory = _warm(runner, fleet, tmp_path)
    done = _local(runner, tmp_path, inventory, "healer.pooled_ssh.pool: {state: flushed}")
    assert done["changed"] is True and done["closed"] == 2 and done["msg"] == "closed 2 transports in the pool"
    assert _transports(collections_root, pool_dir) == []


def test_pool_stops_the_daemon_in_check_mode_then_for_real(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet, extra_env=LONG_LIVED)
    inventory = _warm(runner, fleet, tmp_path)
    pid = pool.daemon_pid(pool_dir)
    task = "healer.pooled_ssh.pool: {state: stopped}"

    dry = _local(runner, tmp_path, inventory, task, "--check")
    assert dry["changed"] is True and dry["running"] is True and dry["daemon"]["pid"] == pid, dry
    assert Path(f"/proc/{pid}").exists()

    done = _local(runner, tmp_path, inventory, task)
    assert done["changed"] is True and done["running"] is False and done["daemon"]["pid"] == pid, done
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, interval=0.05, what="the daemon to exit")

    # Nothing to stop, and it never starts a daemon to find that out.
    again = _local(runner, tmp_path, inventory, task)
    assert again["changed"] is False and again["running"] is False, again
    flushed = _local(runner, tmp_path, inventory, "healer.pooled_ssh.pool: {state: flushed, host: host1}")
    assert flushed["changed"] is False and flushed["running"] is False
    assert not (Path(pool_dir) / pool.PID_FILE).exists()


def test_pool_info_old_options_still_work_and_warn(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, extra_env=LONG_LIVED)
    inventory = _warm(runner, fleet, tmp_path)
    flushed = _local(runner, tmp_path, inventory, "healer.pooled_ssh.pool_info: {flush: host1}")
    assert flushed["changed"] is True and flushed["closed"] == 1, flushed
    assert "[DEPRECATION WARNING]" in flushed["_output"] and "healer.pooled_ssh.pool" in flushed["_output"]
    assert [h for h, _unused, _unused2 in _transports(collections_root, pool_dir)] == ["host2"]
    pid = pool.daemon_pid(pool_dir)
    stopped = _local(runner, tmp_path, inventory, "healer.pooled_ssh.pool_info: {stop: true}")
    assert stopped["changed"] is True and stopped["running"] is False
    assert "[DEPRECATION WARNING]" in stopped["_output"]
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, interval=0.05, what="the daemon to exit")
