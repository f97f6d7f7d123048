"""Jump hosts: ``proxy_jump`` with a pooled bastion transport, chains, and ``proxy_command`` (issue 3)."""

from __future__ import annotations

import re
import shutil

import pytest
from harness import pool

PLAY = """
- hosts: targets
  gather_facts: false
  tasks:
    - name: first
      ansible.builtin.command: hostname
    - name: second
      ansible.builtin.shell: echo "$SSH_CONNECTION"
      register: conn
    - name: third
      ansible.builtin.copy:
        content: "via the bastion\\n"
        dest: "~/jump-{{ inventory_hostname }}.txt"
        mode: "0644"
    - name: fourth
      ansible.builtin.file:
        path: "~/jump-{{ inventory_hostname }}.txt"
        state: absent
"""

BASTION_CONFIG = ["AllowTcpForwarding yes", "LogLevel DEBUG1"]


def _direct_tcpip_targets(log: str) -> list:
    """Targets the bastion's sshd opened forwarding channels to (debug1: server_request_direct_tcpip)."""
    return re.findall(r"server_request_direct_tcpip: originator \S+ port \d+, target (\S+) port (\d+)", log)


def test_three_hosts_behind_one_bastion_share_one_bastion_login(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=4, per_host_config={"host1": BASTION_CONFIG})
    bastion, *targets = fleet.hosts
    assert "AllowTcpForwarding yes" in bastion.config_path.read_text()
    jump = f"{fleet.user}@{bastion.address}:{bastion.port}"
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", hosts=targets, group="targets", group_vars={"ansible_pooled_ssh_proxy_jump": jump}
    )
    runner = make_runner(fleet)
    result = runner.playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()
    recap = result.recap()
    assert all(recap[h.name]["ok"] == 4 and recap[h.name]["failed"] == 0 for h in targets), recap

    # ONE login to the bastion for the whole playbook, one per target.
    assert bastion.accepted_count("publickey") == 1, bastion.log_tail()
    assert [h.accepted_count("publickey") for h in targets] == [1, 1, 1]
    # The bastion forwarded to each target exactly once (one pooled transport per target).
    forwarded = _direct_tcpip_targets(bastion.log_text())
    assert sorted(forwarded) == sorted((h.address, str(h.port)) for h in targets), forwarded

    stats = pool.stats(collections_root, pool_dir)["hosts"]
    assert stats[bastion.address]["poolMisses"] == 1
    assert stats[bastion.address]["poolHits"] == 2
    for h in targets:
        assert stats[h.name]["poolMisses"] == 1 and stats[h.name]["poolHits"] >= 3
    # Each target transport holds one channel slot on the bastion transport.
    snapshot = {t["host"]: t for t in pool.transports(collections_root, pool_dir)}
    assert snapshot[bastion.address]["channels_in_use"] == 3

    # The target transports depend on the bastion: with it gone, new ones cannot be opened.
    bastion.stop()
    again = runner.playbook(PLAY, inventory)
    assert again.rc != 0
    out = again.stdout
    for h in targets:
        assert again.recap()[h.name]["unreachable"] == 1, again.output_tail()
    assert f"{bastion.address}:{bastion.port}: connection refused" in out, out


def test_a_chain_of_two_jump_hosts(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=3, extra_config=BASTION_CONFIG)
    first, second, target = fleet.hosts
    chain = f"{first.address}:{first.port},{fleet.user}@{second.address}:{second.port}"
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", hosts=[target], group="targets", group_vars={"ansible_pooled_ssh_proxy_jump": chain}
    )
    result = make_runner(fleet).playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()
    assert [h.accepted_count("publickey") for h in fleet] == [1, 1, 1]
    # first forwarded to second, second forwarded to the target.
    assert _direct_tcpip_targets(first.log_text()) == [(second.address, str(second.port))]
    assert _direct_tcpip_targets(second.log_text()) == [(target.address, str(target.port))]


def test_jump_host_that_refuses_forwarding_names_it(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=2, per_host_config={"host1": ["AllowTcpForwarding no"]})
    bastion, target = fleet.hosts
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        hosts=[target],
        group="targets",
        group_vars={"ansible_pooled_ssh_proxy_jump": f"{bastion.address}:{bastion.port}"},
    )
    result = make_runner(fleet).playbook(PLAY, inventory)
    assert result.recap()[target.name]["unreachable"] == 1, result.output_tail()
    assert f"the jump host {fleet.user}@{bastion.address}:{bastion.port} refused to connect to it" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_proxy_command_with_openssh_w(make_fleet, make_runner, tmp_path, pool_dir):
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    fleet = make_fleet(count=2, per_host_config={"host1": BASTION_CONFIG})
    bastion, target = fleet.hosts
    command = (
        f"{ssh} -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i {fleet.client_key} "
        f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes "
        f"-p {bastion.port} -W %h:%p {fleet.user}@{bastion.address}"
    )
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        hosts=[target],
        group="targets",
        group_vars={"ansible_paramiko_proxy_command": command},
    )
    result = make_runner(fleet).playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()
    assert bastion.accepted_count("publickey") == 1
    assert target.accepted_count("publickey") == 1
    assert _direct_tcpip_targets(bastion.log_text()) == [(target.address, str(target.port))]


def test_ssh_config_file_supplies_address_user_key_and_jump_host(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=2, per_host_config={"host1": BASTION_CONFIG})
    bastion, target = fleet.hosts
    config = tmp_path / "ssh_config"
    config.write_text(f"""
Host web-behind-bastion
    HostName {target.address}
    Port {target.port}
    User {fleet.user}
    IdentityFile {fleet.client_key}
    ProxyJump jumpbox

Host jumpbox
    HostName {bastion.address}
    Port {bastion.port}
    User {fleet.user}
""")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"""
all:
  vars:
    ansible_connection: healer.pooled_ssh.pooled_ssh
    ansible_pooled_ssh_ssh_config_file: {config}
    ansible_python_interpreter: {fleet.python}
  children:
    targets:
      hosts:
        web-behind-bastion: {{}}
""")
    result = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"}).playbook(
        PLAY, inventory, env={"SSH_AUTH_SOCK": None}
    )
    assert result.rc == 0, result.output_tail()
    assert bastion.accepted_count("publickey") == 1 and target.accepted_count("publickey") == 1
    assert _direct_tcpip_targets(bastion.log_text()) == [(target.address, str(target.port))]
