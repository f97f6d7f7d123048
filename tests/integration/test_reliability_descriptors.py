"""The pool daemon under a soft descriptor limit of 1024, the default of most systems.

The daemon inherits the limit of the worker that starts it. Every pooled transport is a socket,
every connected worker another, every running command may cost more: 1,100 inventory names on
four sshd addresses (distinct pool keys, so 1,100 transports held at once) and 50 forks need
well over 1,100 descriptors at the same time. Every command must succeed and the daemon must
stay up.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness import pool
from harness.scale import spread_inventory, under_nofile

NAMES = 1100
SOFT_LIMIT = 1024

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: cheap
      ansible.builtin.raw: "echo {{ inventory_hostname }}"
"""


def test_1100_transports_and_50_workers_under_a_soft_limit_of_1024(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=4)
    inventory = spread_inventory(tmp_path / "inventory.yml", fleet, NAMES)
    runner = make_runner(fleet, extra_env={"ANSIBLE_FORKS": "50", "ANSIBLE_POOLED_SSH_IDLE_TIMEOUT": "3600"})
    playbook = tmp_path / "cheap.yml"
    playbook.write_text(PLAY, encoding="utf-8")
    result = runner.run(
        under_nofile(SOFT_LIMIT, [runner.executable("ansible-playbook"), "-i", str(inventory), str(playbook)]),
        timeout=3000,
    )
    recap = result.recap()
    bad = {h: r for h, r in recap.items() if r["ok"] != 1 or r["failed"] or r["unreachable"]}
    assert result.rc == 0 and len(recap) == NAMES and not bad, (len(recap), len(bad), result.output_tail())
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count(" started pid=") == 1, log[-3000:]  # one daemon served it all
    # It really started under the soft limit (else this test proves nothing), and raised it.
    limit = re.search(r"descriptor limit (\d+) \(inherited (\d+)\)", log)
    assert limit is not None and int(limit.group(2)) == SOFT_LIMIT < NAMES < int(limit.group(1)), log[:3000]
    # All held at once, each a descriptor past the inherited limit: every transport created, none closed,
    # and the pool's own statistics (a reply larger than one frame for this many hosts) agree.
    assert log.count(" created key=") == NAMES and " closed key=" not in log, log[-3000:]
    stats = pool.stats(collections_root, pool_dir)
    assert len(stats["hosts"]) == NAMES and stats["total"]["totalConnections"] == NAMES, stats["total"]
    assert stats["total"]["poolMisses"] == NAMES and stats["total"]["connectFailures"] == 0, stats["total"]
    assert len(pool.transports(collections_root, pool_dir)) == NAMES
    assert sum(host.accepted_count("publickey") for host in fleet) == NAMES
