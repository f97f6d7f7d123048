"""A command killed by a signal reports 128 + n, as OpenSSH's shell does, and the pool goes on.

Real sshd: a command that kills itself ends with an ``exit-signal`` request instead of an exit
status. The task fails with rc 128 + n (137 for KILL, 143 for TERM), not "the SSH session was
lost"; the next task reuses the same transport.
"""

from __future__ import annotations

from harness import pool

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: killed
      ansible.builtin.raw: "{command}"
      ignore_errors: true
    - name: after
      ansible.builtin.raw: "echo still here"
"""


def test_a_command_killed_by_a_signal_reports_128_plus_n(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=1)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", group_vars={"ansible_pooled_ssh_pty": False})
    runner = make_runner(fleet)
    for signal_name, rc in (("KILL", 137), ("TERM", 143)):
        run = runner.run_json(PLAY.format(command=f"kill -{signal_name} $$"), inventory, timeout=120)
        killed, after = run.task("host1", "killed"), run.task("host1", "after")
        assert killed.get("rc") == rc and killed.get("failed"), killed
        assert "session was lost" not in str(killed.get("msg", "")) and not killed.get("unreachable"), killed
        assert after.get("rc") == 0 and "still here" in after.get("stdout", ""), after
    stats = pool.stats(collections_root, pool_dir)["total"]
    assert stats["poolMisses"] == 1 and stats["totalConnections"] == 1, stats  # one transport served it all
