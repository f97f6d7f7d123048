"""Host keys: hashed and [host]:port entries, unknown keys refused or recorded once, changed keys refused (issue 3)."""

from __future__ import annotations

import json
import subprocess

import pytest

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
"""


def _message(stdout: str, host: str) -> str:
    line = next(ln for ln in stdout.splitlines() if f"[{host}]: UNREACHABLE!" in ln)
    return json.loads(line.split("=>", 1)[1])["msg"]


def _fingerprint(host) -> str:
    pub = host.host_key_paths[0].with_name(host.host_key_paths[0].name + ".pub")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split()[1]


def test_hashed_known_hosts_entries(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=2)
    subprocess.run(["ssh-keygen", "-H", "-f", str(fleet.known_hosts)], check=True, capture_output=True, timeout=30)
    text = fleet.known_hosts.read_text()
    assert text.startswith("|1|") and "127.0.0." not in text
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = make_runner(fleet).playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()


def test_unknown_host_is_refused_with_its_fingerprint(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    fleet.known_hosts.write_text("")
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = make_runner(fleet).playbook(PLAY, inventory)
    message = _message(result.stdout, "host1")
    assert "host key is unknown" in message and _fingerprint(host) in message, message
    assert host.accepted_count() == 0
    assert fleet.known_hosts.read_text() == ""


def test_auto_add_with_ten_forks_records_each_host_once(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=10)
    fleet.known_hosts.write_text("")
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_pooled_ssh_host_key_auto_add": True}
    )
    runner = make_runner(fleet, extra_env={"ANSIBLE_FORKS": "10"})
    for _run in range(2):
        result = runner.playbook(PLAY, inventory)
        assert result.rc == 0, result.output_tail()
    lines = fleet.known_hosts.read_text().splitlines()
    assert sorted(lines) == sorted(h.host_key_line() for h in fleet), lines


def test_auto_add_ten_names_for_one_address_record_one_line(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    fleet.known_hosts.write_text("")
    names = "\n".join(
        f"        alias{i}: {{ansible_host: {host.address}, ansible_port: {host.port}, ansible_user: {fleet.user}, "
        f"ansible_ssh_private_key_file: {fleet.client_key}, ansible_python_interpreter: {fleet.python}}}"
        for i in range(10)
    )
    inventory = tmp_path / "aliases.yml"
    inventory.write_text(
        "all:\n  vars:\n    ansible_connection: healer.pooled_ssh.pooled_ssh\n"
        "    ansible_pooled_ssh_host_key_auto_add: true\n"
        f"  children:\n    fleet:\n      hosts:\n{names}\n"
    )
    result = make_runner(fleet, extra_env={"ANSIBLE_FORKS": "10"}).playbook(PLAY, inventory)
    assert result.rc == 0, result.output_tail()
    assert fleet.known_hosts.read_text().splitlines() == [host.host_key_line()]
    assert host.accepted_count("publickey") == 10  # ten inventory names: ten pool keys


@pytest.mark.parametrize("auto_add", [False, True], ids=["strict", "auto-add"])
def test_changed_host_key_is_refused_naming_file_and_line(make_fleet, make_runner, tmp_path, pool_dir, auto_add):
    fleet = make_fleet(count=2)
    changed = fleet.hosts[1]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_pooled_ssh_host_key_auto_add": auto_add}
    )
    runner = make_runner(fleet)
    assert runner.playbook(PLAY, inventory).rc == 0
    before = fleet.known_hosts.read_text()
    changed.replace_host_key()
    result = runner.playbook(PLAY, inventory)
    assert result.recap()["host1"]["ok"] == 1
    message = _message(result.stdout, "host2")
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in message, message
    assert f"{fleet.known_hosts}:2" in message, message  # host2's line is the second
    assert _fingerprint(changed) in message
    assert fleet.known_hosts.read_text() == before  # never "learned", even with auto-add
    assert changed.accepted_count() == 1  # only the login before the change
