"""Everything paramiko_ssh accepted works with pooled_ssh, under the same names (issue 3).

The option names are compared with ansible-core 2.19's own ``paramiko_ssh`` (from the compat
venv), and an inventory written for ``ansible_connection=paramiko`` is run first with 2.19's
paramiko_ssh, then unchanged but for ``ansible_connection`` with pooled_ssh.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml
from harness.ansible import REPO_ROOT
from harness.sshd import DEFAULT_PASSWORD, is_root

COMPAT_ENV = "HEALER_COMPAT_ANSIBLE_BIN"
PLUGIN = REPO_ROOT / "plugins" / "connection" / "pooled_ssh.py"

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: command
      ansible.builtin.command: id -un
      register: who
    - name: copy
      ansible.builtin.copy:
        content: "parity {{ inventory_hostname }}\\n"
        dest: "~/parity-{{ inventory_hostname }}.txt"
        mode: "0644"
    - name: stat
      ansible.builtin.stat:
        path: "~/parity-{{ inventory_hostname }}.txt"
      register: st
    - name: check
      ansible.builtin.assert:
        that: [st.stat.exists, who.stdout | length > 0]
    - name: clean
      ansible.builtin.file:
        path: "~/parity-{{ inventory_hostname }}.txt"
        state: absent
"""


def compat_bin() -> Optional[Path]:
    """ansible-core 2.19's bin dir: $HEALER_COMPAT_ANSIBLE_BIN, else the checkout's .venv-compat."""
    configured = os.environ.get(COMPAT_ENV)
    if configured:
        return Path(configured)
    local = REPO_ROOT / ".venv-compat" / "bin"
    return local if (local / "ansible-playbook").exists() else None


def require_compat() -> Path:
    found = compat_bin()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{COMPAT_ENV} must point at an ansible-core 2.19 bin dir in CI")
        pytest.skip(f"no ansible-core 2.19 (set {COMPAT_ENV})")
    return found


def _documentation(source: str) -> Dict[str, Any]:
    return yaml.safe_load(
        source.split('DOCUMENTATION = r"""', 1)[-1].split('DOCUMENTATION = """', 1)[-1].split('"""', 1)[0]
    )


def _names(option: Dict[str, Any]) -> Dict[str, set]:
    return {
        "vars": {v["name"] for v in option.get("vars") or []},
        "env": {e["name"] for e in option.get("env") or []},
        "ini": {(i["section"], i["key"]) for i in option.get("ini") or []},
        "cli": {c["name"] for c in option.get("cli") or []},
        "keyword": {k["name"] for k in option.get("keyword") or []},
    }


def test_every_paramiko_option_name_is_accepted() -> None:
    bindir = require_compat()
    source = subprocess.run(
        [
            str(bindir / "python"),
            "-c",
            "import inspect, ansible.plugins.connection.paramiko_ssh as m; print(inspect.getsource(m))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    theirs = _documentation(source)["options"]
    ours = _documentation(PLUGIN.read_text())["options"]
    missing = []
    for name, option in theirs.items():
        if name not in ours:
            missing.append(f"option {name}")
            continue
        mine = _names(ours[name])
        for kind, names in _names(option).items():
            for item in sorted(names - mine[kind], key=str):
                missing.append(f"{name}: {kind} {item}")
        # And each has our own ansible_pooled_ssh_* variable where paramiko_ssh had variables.
        if option.get("vars") and not any(v.startswith("ansible_pooled_ssh_") for v in mine["vars"]):
            missing.append(f"{name}: no ansible_pooled_ssh_* variable")
    assert not missing, missing


RELAY = """
import os, selectors, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sel = selectors.DefaultSelector()
sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
sel.register(sock, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is sock:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            os.write(1, data)
        else:
            data = os.read(0, 65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)
                sel.unregister(sys.stdin.fileno())
            else:
                sock.sendall(data)
"""


def test_paramiko_variable_and_env_names_are_honoured(make_fleet, make_runner, tmp_path, pool_dir):
    """Each host uses other paramiko_ssh names; ansible.cfg's [paramiko_connection] section applies."""
    fleet = make_fleet(count=4)
    h1, h2, h3, h4 = fleet.hosts
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    fleet.known_hosts.write_text("")  # learned through host_key_auto_add, not recorded (record_host_keys)
    inventory = tmp_path / "inventory.yml"
    common = {"ansible_python_interpreter": fleet.python}
    hosts = {
        "p1": dict(
            common,
            ansible_paramiko_host=h1.address,
            ansible_paramiko_port=h1.port,
            ansible_paramiko_user=fleet.user,
            ansible_paramiko_private_key_file=str(fleet.client_key),
        ),
        "p2": dict(
            common,
            ansible_ssh_host=h2.address,
            ansible_ssh_port=h2.port,
            ansible_ssh_user=fleet.user,
            ansible_ssh_private_key_file=str(fleet.client_key),
        ),
        "p3": dict(
            common,
            ansible_host=h3.address,
            ansible_port=h3.port,
            ansible_user=fleet.user,
            ansible_private_key_file=str(fleet.client_key),
            ansible_paramiko_proxy_command=f"{sys.executable} {relay} %h %p",
        ),
        "p4": dict(
            common, ansible_host=h4.address, ansible_user=fleet.user, ansible_ssh_private_key_file=str(fleet.client_key)
        ),
    }
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {"ansible_connection": "healer.pooled_ssh.pooled_ssh"},
                    "children": {"fleet": {"hosts": hosts}},
                }
            }
        )
    )
    runner = make_runner(fleet)
    runner.config_path.write_text(
        "[defaults]\n"
        "[paramiko_connection]\n"
        "host_key_auto_add = True\nrecord_host_keys = False\nlook_for_keys = False\npty = False\n"
        "banner_timeout = 7\ntimeout = 7\nuse_rsa_sha2_algorithms = False\n"
    )
    play = (
        PLAY
        + """
    - name: no pty (pty = False)
      ansible.builtin.raw: tty || true
      register: tty
    - ansible.builtin.assert:
        that: "'not a tty' in tty.stdout"
"""
    )
    result = runner.playbook(play, inventory, env={"SSH_AUTH_SOCK": None, "ANSIBLE_REMOTE_PARAMIKO_PORT": str(h4.port)})
    assert result.rc == 0, result.output_tail()
    assert [h.accepted_count("publickey") for h in fleet] == [1, 1, 1, 1]
    assert fleet.known_hosts.read_text() == ""
    # host_key_checking = False (paramiko's env name): no known_hosts entry and no auto-add needed.
    runner.config_path.write_text("[defaults]\n")
    # host_key_checking is part of the pool key: these are new transports, checked against an empty file.
    unchecked = runner.playbook(
        PLAY,
        inventory,
        env={
            "SSH_AUTH_SOCK": None,
            "ANSIBLE_PARAMIKO_HOST_KEY_CHECKING": "False",
            "ANSIBLE_REMOTE_PARAMIKO_PORT": str(h4.port),
        },
    )
    assert unchecked.rc == 0, unchecked.output_tail()
    assert [h.accepted_count("publickey") for h in fleet] == [2, 2, 2, 2]


def _compat_inventory(fleet, connection: str) -> str:
    """An inventory of the paramiko_ssh era: only old variable names."""
    key_host, pass_host, legacy_host = fleet.hosts
    data = {
        "all": {
            "vars": {"ansible_connection": connection, "ansible_python_interpreter": fleet.python},
            "children": {
                "fleet": {
                    "hosts": {
                        "old-key": {
                            "ansible_ssh_host": key_host.address,
                            "ansible_ssh_port": key_host.port,
                            "ansible_ssh_user": fleet.user,
                            "ansible_ssh_private_key_file": str(fleet.client_key),
                        },
                        "old-pass": {
                            "ansible_ssh_host": pass_host.address,
                            "ansible_ssh_port": pass_host.port,
                            "ansible_ssh_user": fleet.user,
                            "ansible_ssh_pass": DEFAULT_PASSWORD,
                        },
                        "old-paramiko": {
                            "ansible_paramiko_host": legacy_host.address,
                            "ansible_paramiko_port": legacy_host.port,
                            "ansible_paramiko_user": fleet.user,
                            "ansible_paramiko_pass": DEFAULT_PASSWORD,
                            "ansible_paramiko_host_key_checking": True,
                        },
                    }
                }
            },
        }
    }
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.skipif(not is_root(), reason="needs root: login passwords")
def test_paramiko_inventory_works_unchanged(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    bindir = require_compat()
    fleet = make_fleet(count=3, password=DEFAULT_PASSWORD)
    # paramiko_ssh reads ~/.ssh/known_hosts: give both runs a HOME whose known_hosts holds the fleet's
    # keys, so host keys stay verified (and no key of the real HOME is offered).
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(fleet.known_hosts.read_text())
    env = {
        "HOME": str(home),
        "SSH_AUTH_SOCK": None,
        "ANSIBLE_POOLED_SSH_KNOWN_HOSTS_FILE": None,
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }
    old = tmp_path / "inventory-paramiko.yml"
    old.write_text(_compat_inventory(fleet, "paramiko"))
    legacy = make_runner(fleet, python_bin_dir=str(bindir))
    first = legacy.playbook(PLAY, old, env=env)
    assert first.rc == 0, first.output_tail()
    assert all(first.recap()[h]["ok"] == 5 for h in ("old-key", "old-pass", "old-paramiko")), first.recap()
    before = [h.accepted_count() for h in fleet]
    assert all(n >= 2 for n in before), before  # paramiko_ssh logs in again in every task's worker

    new = tmp_path / "inventory-pooled.yml"
    new.write_text(
        old.read_text().replace("ansible_connection: paramiko", "ansible_connection: healer.pooled_ssh.pooled_ssh")
    )
    assert len(old.read_text().splitlines()) == len(new.read_text().splitlines())
    second = make_runner(fleet).playbook(PLAY, new, env=env)
    assert second.rc == 0, second.output_tail()
    assert all(second.recap()[h]["ok"] == 5 for h in ("old-key", "old-pass", "old-paramiko")), second.recap()
    after = [h.accepted_count() for h in fleet]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1], (before, after)  # one login per host
    key_host, pass_host, _legacy = fleet.hosts
    assert key_host.log_text().count("Accepted publickey") == after[0]
    assert re.search(r"Accepted password for", pass_host.log_text())
