"""A command that closes its output and keeps running costs the pool daemon next to nothing.

``exec >/dev/null 2>&1; sleep 5`` without a pty: sshd sends the channel's end of file at once,
the command runs five more seconds. The daemon waits for its exit status; waiting must not spin
(a spinning relay slows every other relay through the interpreter lock). CPU time comes from
/proc/<pid>/stat, so a busy machine does not change the figure.
"""

from __future__ import annotations

import os

from harness import pool

RUNS_FOR = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

WARM = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.raw: "true"
"""

QUIET = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: quiet
      ansible.builtin.raw: "exec >/dev/null 2>&1; sleep {RUNS_FOR:g}"
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def test_command_with_output_closed_costs_the_daemon_under_a_tenth_of_a_core(
    make_fleet, make_runner, tmp_path, pool_dir
):
    fleet = make_fleet(count=1)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", group_vars={"ansible_pooled_ssh_pty": False})
    runner = make_runner(fleet)
    assert runner.playbook(WARM, inventory, timeout=120).rc == 0  # the daemon and its transport exist
    daemon = pool.daemon_pid(pool_dir)
    before = cpu_seconds(daemon)
    result = runner.playbook(QUIET, inventory, timeout=120)
    spent = cpu_seconds(daemon) - before
    assert result.rc == 0, result.output_tail()
    assert pool.daemon_pid(pool_dir) == daemon
    print(f"daemon CPU while a {RUNS_FOR:g} s command ran with its output closed: {spent:.2f} s")
    assert spent < 0.1 * RUNS_FOR, f"{spent:.2f} CPU seconds for a {RUNS_FOR:g} s wait"
