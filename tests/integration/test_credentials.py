"""Credentials go only where OpenSSH would send them, and the pool key is the identity a request declares.

- ``ansible_password`` with an unencrypted key logs in with the key (the password is not a passphrase).
- A jump host never receives the target's password; ``proxy_jump_password`` is what it gets.
- A transport accepted with ``host_key_auto_add`` and nothing recorded is not reused by a strict run.
- A key file rewritten at the same path opens a new transport with the new key.
"""

from __future__ import annotations

import subprocess

import pytest
from harness.sshd import DEFAULT_PASSWORD, ENCRYPTED_KEY_PASSPHRASE, generate_key, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: login passwords")

PLAY = """
- hosts: {group}
  gather_facts: false
  tasks:
    - name: run
      ansible.builtin.command: "true"
"""
NO_AGENT = {"SSH_AUTH_SOCK": None}
#: No default keys, transports and the daemon outlive the slowest test (a later run must be able to reuse).
ENV = {
    "ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0",
    "ANSIBLE_POOLED_SSH_IDLE_TIMEOUT": "3600",
    "ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT": "3600",
}
BASTION = ["AllowTcpForwarding yes", "PubkeyAuthentication no", "LogLevel DEBUG1"]


def _fingerprint(key) -> str:
    pub = key.with_name(key.name + ".pub")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split()[1]


def _password_attempts(host) -> list:
    """Every password the sshd was offered, accepted or not (LogLevel DEBUG1 logs failures too)."""
    return [ln for ln in host.log_text().splitlines() if "password for" in ln and ("Accepted" in ln or "Failed" in ln)]


def test_password_with_an_unencrypted_key_logs_in_with_the_key(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1, password=DEFAULT_PASSWORD)
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", group_vars={"ansible_password": DEFAULT_PASSWORD})
    result = make_runner(fleet, extra_env=ENV).playbook(PLAY.format(group="fleet"), inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    assert host.accepted_count("publickey") == 1 and host.accepted_count("password") == 0, host.log_tail()
    assert _fingerprint(fleet.client_key) in host.log_text()


def test_a_wrong_passphrase_says_so(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        key=fleet.encrypted_key,
        group_vars={"ansible_pooled_ssh_private_key_passphrase": "not-it"},
    )
    result = make_runner(fleet, extra_env=ENV).playbook(PLAY.format(group="fleet"), inventory, env=NO_AGENT)
    assert result.recap()["host1"]["unreachable"] == 1, result.output_tail()
    assert (
        f"private key {fleet.encrypted_key} is encrypted and private_key_passphrase does not decrypt it"
        in result.stdout
    ), result.stdout
    assert fleet.hosts[0].accepted_count() == 0


@pytest.mark.parametrize("jump_password", [False, True], ids=["target-password-only", "proxy_jump_password"])
def test_the_target_password_never_reaches_the_bastion(make_fleet, make_runner, tmp_path, pool_dir, jump_password):
    # Both hosts log in the same user with the same password: had the bastion been sent the target's
    # password, it would have accepted it.
    fleet = make_fleet(count=2, password=DEFAULT_PASSWORD, per_host_config={"host1": BASTION})
    bastion, target = fleet.hosts
    group_vars = {
        "ansible_pooled_ssh_proxy_jump": f"{fleet.user}@{bastion.address}:{bastion.port}",
        "ansible_password": DEFAULT_PASSWORD,
    }
    if jump_password:
        group_vars["ansible_pooled_ssh_proxy_jump_password"] = DEFAULT_PASSWORD
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", hosts=[target], group="targets", use_key=False, group_vars=group_vars
    )
    result = make_runner(fleet, extra_env=ENV).playbook(PLAY.format(group="targets"), inventory, env=NO_AGENT)
    if not jump_password:
        assert result.recap()[target.name]["unreachable"] == 1, result.output_tail()
        assert _password_attempts(bastion) == [], bastion.log_tail()
        assert bastion.accepted_count() == 0 and target.accepted_count() == 0
        assert f"{bastion.address}:{bastion.port}: authentication failed" in result.stdout, result.stdout
        return
    assert result.rc == 0, result.output_tail()
    assert bastion.accepted_count("password") == 1 and target.accepted_count("password") == 1


def test_an_unverified_transport_is_not_reused_by_a_strict_run(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    known_hosts = tmp_path / "empty_known_hosts"
    known_hosts.write_text("")
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(known_hosts, extra_env=ENV)
    trusting = runner.playbook(
        PLAY.format(group="fleet"),
        inventory,
        env={"ANSIBLE_POOLED_SSH_HOST_KEY_AUTO_ADD": "1", "ANSIBLE_POOLED_SSH_RECORD_HOST_KEYS": "0"},
    )
    assert trusting.rc == 0, trusting.output_tail()
    assert known_hosts.read_text() == "" and host.accepted_count("publickey") == 1

    strict = runner.playbook(PLAY.format(group="fleet"), inventory)
    assert strict.recap()["host1"]["unreachable"] == 1, strict.output_tail()
    assert "host key is unknown" in strict.stdout, strict.stdout
    assert host.accepted_count("publickey") == 1, "the strict run logged in"


def test_a_key_rewritten_at_the_same_path_opens_a_new_transport(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    first, second = generate_key(tmp_path / "first"), generate_key(tmp_path / "second")
    with fleet.authorized_keys.open("a") as f:
        for key in (first, second):
            f.write(key.with_name(key.name + ".pub").read_text())
    job_key = tmp_path / "job_key"
    job_key.write_bytes(first.read_bytes())
    job_key.chmod(0o600)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", key=job_key)
    runner = make_runner(fleet, extra_env=ENV)
    assert runner.playbook(PLAY.format(group="fleet"), inventory, env=NO_AGENT).rc == 0
    assert host.accepted_count("publickey") == 1 and _fingerprint(first) in host.log_text()

    job_key.write_bytes(second.read_bytes())
    result = runner.playbook(PLAY.format(group="fleet"), inventory, env=NO_AGENT)
    assert result.rc == 0, result.output_tail()
    assert host.accepted_count("publickey") == 2, "the old login was reused for the new key"
    assert _fingerprint(second) in host.log_text()
