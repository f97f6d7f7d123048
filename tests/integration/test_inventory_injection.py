"""Inventory values with whitespace, a newline or a leading '-' are refused before anything runs.

Each case is shaped like the attack it stands for, against a real OpenSSH ``ssh -W`` proxy
through a real bastion: had the value reached the proxy command line, ``ssh`` would run a
``ProxyCommand`` of the inventory's choosing (it creates a marker file); had it reached
known_hosts, the file would trust an attacker's key for every host (``*``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness.sshd import generate_key

PLAY = """
- hosts: targets
  gather_facts: false
  tasks:
    - name: run
      ansible.builtin.command: "true"
"""

BASTION_CONFIG = ["AllowTcpForwarding yes"]


def _ssh_proxy(fleet, bastion, tail: str) -> str:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    return (
        f"{ssh} -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {fleet.client_key} "
        f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes -p {bastion.port} {tail}"
    )


def _cases(fleet, bastion, target, marker: Path, attacker_key: str):
    """(ansible_host, proxy command) per case: what the value would have done is in the comment."""
    direct = f"-W {target.address}:{target.port} {fleet.user}@{bastion.address}"
    return {
        # -W <target>:<port> -oProxyCommand=touch <marker>:<port> user@bastion
        "space": (
            f"{target.address}:{target.port} -oProxyCommand=touch\\ {marker}",
            _ssh_proxy(fleet, bastion, f"-W %h:%p {fleet.user}@{bastion.address}"),
        ),
        # known_hosts gains "* ssh-ed25519 <attacker key>" (the proxy ignores %h: the login would succeed)
        "newline": (f"{target.address}\n* ssh-ed25519 {attacker_key}\n#", _ssh_proxy(fleet, bastion, direct)),
        # ssh reads the host as its option -oProxyCommand=touch <marker>
        "leading-dash": (f"-oProxyCommand=touch\\ {marker}", _ssh_proxy(fleet, bastion, f"{direct} %h")),
    }


@pytest.mark.parametrize("case", ["space", "newline", "leading-dash"])
def test_bad_ansible_host_fails_clearly_and_changes_nothing(make_fleet, make_runner, tmp_path, pool_dir, case):
    fleet = make_fleet(count=2, per_host_config={"host1": BASTION_CONFIG})
    bastion, target = fleet.hosts
    marker = tmp_path / "proxy-ran"
    attacker = generate_key(tmp_path / "attacker")
    attacker_key = attacker.with_name("attacker.pub").read_text().split()[1]
    value, proxy = _cases(fleet, bastion, target, marker, attacker_key)[case]
    known_hosts = tmp_path / "plugin_known_hosts"
    known_hosts.write_text(f"{target.host_key_line()}\n" if case != "newline" else "")
    before = known_hosts.read_bytes()
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        hosts=[target],
        group="targets",
        host_vars={target.name: {"ansible_host": value}},
        group_vars={"ansible_paramiko_proxy_command": proxy, "ansible_pooled_ssh_host_key_auto_add": True},
    )

    run = make_runner(known_hosts).run_json(PLAY, inventory)

    assert run.rc != 0, run.result.output_tail()
    res = run.task(target.name, "run")
    assert res.get("failed") or res.get("unreachable"), res
    message = res["msg"]
    assert "\n" not in message, message
    assert f"pooled_ssh option for {target.name}: remote_addr (ansible_host): the host name {value!r}" in message, (
        message
    )
    assert "OpenSSH refuses" in message, message
    # Nothing happened: no proxy ran, nothing was recorded, neither sshd saw a login.
    assert not list(tmp_path.glob(f"{marker.name}*")), "the proxy command ran the inventory's ProxyCommand"
    assert known_hosts.read_bytes() == before
    assert bastion.accepted_count() == 0 and target.accepted_count() == 0
    assert "Traceback" not in run.result.stdout + run.result.stderr


def test_the_same_proxy_command_works_with_a_clean_host(make_fleet, make_runner, tmp_path, pool_dir):
    """The cases above fail because of the value, not the proxy: with the address alone it logs in."""
    fleet = make_fleet(count=2, per_host_config={"host1": BASTION_CONFIG})
    bastion, target = fleet.hosts
    proxy = _ssh_proxy(fleet, bastion, f"-W %h:%p {fleet.user}@{bastion.address}")
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        hosts=[target],
        group="targets",
        group_vars={"ansible_paramiko_proxy_command": proxy},
    )
    result = make_runner(fleet).playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()
    assert bastion.accepted_count("publickey") == 1 and target.accepted_count("publickey") == 1
    assert json.dumps(result.recap()[target.name]) == json.dumps(
        {"ok": 1, "changed": 1, "unreachable": 0, "failed": 0, "skipped": 0, "rescued": 0, "ignored": 0}
    )
