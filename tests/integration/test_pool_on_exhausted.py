"""on_exhausted past max_connections, with two playbooks sharing one pool against a real sshd host.

The first playbook holds the host's only transport (max_connections 1, max_channels 1) with a
command that waits for a file the test writes; meanwhile a second playbook either fails at once
(``fail``) or gets an unpooled one-off transport (``direct``), counted in the pool's statistics.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from harness import pool

HOLD = """
- name: Hold the host's only transport
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Wait for the test's release file
      ansible.builtin.shell: >-
        touch {held}; for i in $(seq 1200); do [ -e {release} ] && exit 0; sleep 0.1; done; exit 1
      changed_when: false
"""

QUICK = """
- name: One more command on the same host
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Echo
      ansible.builtin.command: echo past-the-limit
      changed_when: false
"""


def wait_for(path: Path, what: str, thread: threading.Thread) -> None:
    """Bounded poll for a file the holding playbook creates (it fails the test if the playbook ends first)."""
    for _round in range(3000):
        if path.exists():
            return
        assert thread.is_alive(), f"the holding playbook ended before {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_on_exhausted_fail_and_direct_past_max_connections(
    make_fleet, make_runner, tmp_path, shared_dir, collections_root, pool_dir
):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={
            "ansible_pooled_ssh_max_connections": 1,
            "ansible_pooled_ssh_max_channels": 1,
            "ansible_pooled_ssh_pool_wait_timeout": 600,
        },
    )
    held, release = shared_dir / "held", shared_dir / "release"
    results = {}
    holder = threading.Thread(
        target=lambda: results.setdefault("hold", runner.run_json(HOLD.format(held=held, release=release), inventory)),
        daemon=True,
    )
    holder.start()
    try:
        wait_for(held, "the transport to be held", holder)
        failed = runner.run_json(QUICK, inventory, "-e", "ansible_pooled_ssh_on_exhausted=fail")
        direct = runner.run_json(QUICK, inventory, "-e", "ansible_pooled_ssh_on_exhausted=direct")
    finally:
        release.touch()
        holder.join(timeout=600)
    assert not holder.is_alive()
    assert results["hold"].rc == 0, results["hold"].result.output_tail()

    assert failed.rc != 0
    msg = failed.task(host.name, "Echo")["msg"]
    assert "Connection pool exhausted for" in msg and "(max: 1)" in msg, msg
    assert "on_exhausted is fail" in msg, msg

    assert direct.rc == 0, direct.result.output_tail()
    assert direct.task(host.name, "Echo")["stdout"] == "past-the-limit"
    stats = pool.stats(collections_root, pool_dir)["hosts"][host.name]
    assert stats["directConnections"] == 1 and stats["exhausted"] == 1, stats
    assert host.accepted_count("publickey") == 2, "the pooled transport and the one-off"
    assert stats["totalConnections"] <= 1, "the one-off transport is closed after its request"
