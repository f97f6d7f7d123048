"""Ansible's own semantics for escalation that never completes, compared with the ssh plugin in
the same test: what ansible-core's ``connection_ssh`` and ``become_su`` targets expect.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
from harness.sshd import DEFAULT_PASSWORD, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: the test runs ssh as the harness user")

PLAY = """
- hosts: fleet
  gather_facts: false
  become: true
  tasks:
    - name: escalate
      ansible.builtin.command: id -u
"""


def _outcome(run: Any) -> Dict[str, Any]:
    for line in run.stdout.splitlines():
        if "[host1]:" in line and "=>" in line:
            kind = "unreachable" if "UNREACHABLE!" in line else "failed" if "FAILED!" in line else "ok"
            return {"kind": kind, "msg": json.loads(line.split("=>", 1)[1]).get("msg", "")}
    return {"kind": "ok" if run.rc == 0 else "none", "msg": run.stdout[-2000:]}


def test_a_become_timeout_is_unreachable_as_with_the_ssh_plugin(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    # A "sudo" that asks in words Ansible does not recognise and then waits for ever.
    fake = fleet.dir / "fake-sudo"
    fake.write_text("#!/bin/sh\nprintf 'Say it: '\nread answer\n", encoding="utf-8")
    fake.chmod(0o755)
    common = {
        "ansible_become_password": DEFAULT_PASSWORD,
        "ansible_become_exe": str(fake),
        "ansible_timeout": 3,
        "ansible_pooled_ssh_timeout": 3,
    }
    outcomes = {}
    for plugin, extra in (
        (
            "ssh",
            {
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={fleet.known_hosts} "
                "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null"
            },
        ),
        ("healer.pooled_ssh.pooled_ssh", {}),
    ):
        inventory = fleet.write_inventory(
            tmp_path / f"inventory-{plugin}.yml", connection=plugin, group_vars={**common, **extra}
        )
        for pipelining in (True, False):
            run = make_runner(fleet, pipelining=pipelining).playbook(PLAY, inventory, timeout=300)
            outcomes[(plugin, pipelining)] = _outcome(run)
    for pipelining in (True, False):
        ssh = outcomes[("ssh", pipelining)]
        pooled = outcomes[("healer.pooled_ssh.pooled_ssh", pipelining)]
        assert ssh["kind"] == "unreachable", outcomes  # the reference behaves as ansible-core's targets say
        assert pooled["kind"] == ssh["kind"], outcomes
        assert "privilege escalation prompt" in pooled["msg"] and "Say it:" in pooled["msg"], pooled
