"""Connection warming (issue 15): a task that needs no connection has its host's transport opened
for the host's next task, with real ansible-playbook, sshd and Paramiko."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import pool
from harness.sshd import DEFAULT_PASSWORD, is_root

#: set_fact needs no connection; the command after it does.
PLAY = """
- hosts: fleet
  gather_facts: false
  ignore_unreachable: true
  tasks:
    - ansible.builtin.set_fact: {seen: true}
    - ansible.builtin.command: "true"
"""


def test_a_task_without_a_connection_warms_its_host_for_the_next(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = runner.playbook(PLAY, inventory, "-vvvv")
    assert result.rc == 0, result.output_tail()
    # The command found its host's transport open (or its login under way, which it waited for): it
    # counts as that command's login (a new transport for it), made ahead of it.
    assert result.stdout.count("POOL asked the daemon to open the transport for the host's next task") == 2
    assert result.stdout.count("POOL created transport") == 2, result.output_tail()
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count("warmed key=") == 2 and log.count("created key=") == 2, log
    for host in fleet:
        assert host.accepted_count() == 1, host.log_tail()
    warm = pool.status(collections_root, pool_dir)["daemon"]["warm"]
    assert warm == {"opened": 2, "failed": 0, "skipped": 0}, warm
    # A second run: the transports are there, nothing more is opened.
    again = runner.playbook(PLAY, inventory)
    assert again.rc == 0, again.output_tail()
    assert pool.status(collections_root, pool_dir)["daemon"]["warm"]["opened"] == 2
    assert all(host.accepted_count() == 1 for host in fleet)


def test_warm_transports_off_opens_only_for_requests(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_WARM_TRANSPORTS": "false"})
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = runner.playbook(PLAY, inventory, "-vvvv")
    assert result.rc == 0, result.output_tail()
    assert result.stdout.count("POOL created transport") == 2, result.output_tail()
    assert "POOL asked the daemon" not in result.stdout
    assert "warmed key=" not in (Path(pool_dir) / "daemon.log").read_text()
    assert pool.status(collections_root, pool_dir)["daemon"]["warm"] == {"opened": 0, "failed": 0, "skipped": 0}


@pytest.mark.skipif(not is_root(), reason="needs root: login passwords")
def test_a_failed_warm_login_adds_no_attempt(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=1, password=DEFAULT_PASSWORD, extra_config=["PubkeyAuthentication no"])
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", use_key=False, group_vars={"ansible_password": "wrong-password"}
    )
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"})
    result = runner.playbook(PLAY, inventory, env={"SSH_AUTH_SOCK": None}, timeout=120)
    assert result.recap()["host1"]["ignored"] == 1, result.output_tail()
    line = next(ln for ln in result.stdout.splitlines() if "[host1]: UNREACHABLE!" in ln)
    message = json.loads(line.split("=>", 1)[1])["msg"]
    # The command fails as without warming: the warm login's failure (if it waited for it) or the
    # connector's memory of it ("not retried"), never a second knock at the server.
    assert f"{host.address}:{host.port}: authentication failed for user '{fleet.user}'" in message, message
    assert "\n" not in message, message
    assert "Traceback" not in result.stdout + result.stderr
    # One login attempt reached the server for the two tasks.
    assert host.log_text().count("Connection closed by authenticating user") == 1, host.log_tail()
    warm = pool.status(collections_root, pool_dir)["daemon"]["warm"]
    assert warm["failed"] == 1 and warm["opened"] == 0, warm
