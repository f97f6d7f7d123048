"""No password, passphrase or key material in -vvvv output or in the daemon's files (issue 3)."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest
from harness.sshd import DEFAULT_PASSWORD, ENCRYPTED_KEY_PASSPHRASE, is_root, set_password

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: login passwords and a second user")

BECOME_USER = "healer-test2"
BECOME_PASSWORD = "healer-Test2-pw-2"


def _ensure_become_user() -> None:
    try:
        pwd.getpwnam(BECOME_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", BECOME_USER], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode not in (0, 9):
            raise RuntimeError(proc.stderr) from None
    set_password(BECOME_USER, BECOME_PASSWORD)


def _key_material(path: Path) -> list:
    """The base64 lines of a private key file: none of them may be printed anywhere."""
    lines = path.read_text().splitlines()
    return [ln for ln in lines if ln and not ln.startswith("-----")]


def test_no_secret_in_vvvv_output_or_daemon_files(make_fleet, make_runner, tmp_path, pool_dir):
    _ensure_become_user()
    fleet = make_fleet(count=2, password=DEFAULT_PASSWORD, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    password_host, key_host = fleet.hosts
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        use_key=False,
        host_vars={
            "host1": {"ansible_password": DEFAULT_PASSWORD},
            "host2": {
                "ansible_ssh_private_key_file": str(fleet.encrypted_key),
                "ansible_pooled_ssh_private_key_passphrase": ENCRYPTED_KEY_PASSPHRASE,
            },
        },
        group_vars={
            "ansible_become_method": "su",
            "ansible_become_user": BECOME_USER,
            "ansible_become_password": BECOME_PASSWORD,
            "ansible_shell_allow_world_readable_temp": True,
        },
    )
    play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - {{name: plain, ansible.builtin.command: id -un}}
    - {{name: escalated, ansible.builtin.command: id -un, become: true, register: who}}
    - ansible.builtin.assert: {{that: "who.stdout == '{BECOME_USER}'"}}
"""
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS": "0"})
    result = runner.playbook(play, inventory, "-vvvv", env={"SSH_AUTH_SOCK": None})
    assert result.rc == 0, result.output_tail()
    assert password_host.accepted_count("password") == 1 and key_host.accepted_count("publickey") == 1
    assert "ESTABLISH POOLED SSH CONNECTION" in result.stdout and "POOL created transport" in result.stdout
    places = {"stdout": result.stdout, "stderr": result.stderr}
    for name in ("daemon.log", "daemon.stderr"):
        path = Path(pool_dir) / name
        places[name] = path.read_text(errors="replace") if path.exists() else ""
    assert "started pid=" in places["daemon.log"]
    secrets = {
        "login password": DEFAULT_PASSWORD,
        "key passphrase": ENCRYPTED_KEY_PASSPHRASE,
        "become password": BECOME_PASSWORD,
    }
    for n, line in enumerate(_key_material(fleet.encrypted_key) + _key_material(fleet.client_key)):
        secrets[f"private key line {n}"] = line
    leaks = [(what, where) for what, secret in secrets.items() for where, text in places.items() if secret in text]
    assert not leaks, leaks
