"""The daemon keeps no secret of the playbook that started it in its environment, and cannot be dumped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import pool
from harness.sshd import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: reading another process's /proc entries")

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
"""

SECRETS = {
    "ANSIBLE_BECOME_PASS": "become-Secret-1",
    "ANSIBLE_BECOME_PASSWORD": "become-Secret-2",
    "ANSIBLE_PASSWORD": "login-Secret-3",
    "ANSIBLE_NET_PASSWORD": "net-Secret-4",
    "PYTHONPATH": "/nonexistent-pythonpath",
    "PYTHONSTARTUP": "/nonexistent-startup",
}


def _environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_daemon_environment_is_allow_listed_and_it_is_not_dumpable(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=1)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = make_runner(fleet).playbook(PLAY, inventory, env=dict(SECRETS, SSH_AUTH_SOCK="/run/agent-of-the-run"))
    assert result.rc == 0, result.output_tail()
    pid = pool.daemon_pid(pool_dir)

    env = _environ(pid)
    assert not [k for k in env if re.match(r"ANSIBLE_.*PASS", k)], sorted(env)
    assert not [k for k in env if k.startswith(("ANSIBLE_", "PYTHON"))], sorted(env)
    assert not [v for v in env.values() if any(s in v for s in SECRETS.values())]
    assert env.get("SSH_AUTH_SOCK") == "/run/agent-of-the-run" and "PATH" in env

    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1] == b"-I", cmdline[:3]

    # The kernel's own answer for that process (prctl PR_GET_DUMPABLE, asked by the daemon itself).
    assert pool.status(collections_root, pool_dir)["daemon"]["dumpable"] is False
