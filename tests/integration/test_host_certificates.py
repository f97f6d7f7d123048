"""Host certificates: a fleet that trusts a host CA (``@cert-authority`` in known_hosts) instead of
collecting host keys. Real sshd with ``HostCertificate``, certificates made by ``ssh-keygen -s``
at test time, and the ssh connection plugin run the same way as the reference.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from harness.sshd import SshdHost, generate_key

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: hello
      ansible.builtin.command: echo hello
"""


def certify(host: SshdHost, ca: Path, principals: str, validity: str = "-5m:+1h") -> Path:
    """Sign the host's key with ``ca`` and make sshd offer the certificate."""
    key = host.host_key_paths[0]
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca),
            "-I",
            f"{host.name}-cert",
            "-h",
            "-n",
            principals,
            "-V",
            validity,
            str(key.with_name(key.name + ".pub")),
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    cert = key.with_name(key.name + "-cert.pub")
    host.set_config([*host.extra_config, f"HostCertificate {cert}"])
    return cert


def ca_known_hosts(path: Path, host: SshdHost, ca: Path, revoked: bool = False) -> Path:
    """known_hosts that trusts ``ca`` for the host and holds no host key at all."""
    ca_pub = " ".join(ca.with_name(ca.name + ".pub").read_text(encoding="utf-8").split()[:2])
    lines = [f"@cert-authority [{host.address}]:{host.port} {ca_pub}"]
    if revoked:
        lines.append(f"@revoked * {ca_pub}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _outcome(run: Any) -> Dict[str, Any]:
    line = next((ln for ln in run.stdout.splitlines() if "[host1]:" in ln and "=>" in ln), None)
    status = "ok" if run.recap().get("host1", {}).get("unreachable", 1) == 0 and run.rc == 0 else "unreachable"
    msg = json.loads(line.split("=>", 1)[1]).get("msg", "") if line and status != "ok" else ""
    return {"status": status, "msg": msg}


def _both(fleet, make_runner, tmp_path: Path, known_hosts: Path) -> Dict[str, Dict[str, Any]]:
    """The play through pooled_ssh and through ssh, both checking host keys against ``known_hosts``."""
    results = {}
    for plugin in ("healer.pooled_ssh.pooled_ssh", "ssh"):
        group_vars: Optional[Dict[str, Any]] = None
        if plugin == "ssh":
            group_vars = {
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
                "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null"
            }
        inventory = fleet.write_inventory(
            tmp_path / f"inventory-{plugin}.yml", connection=plugin, group_vars=group_vars
        )
        run = make_runner(known_hosts).playbook(PLAY, inventory, timeout=300)
        results[plugin] = _outcome(run)
    return results


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return generate_key(tmp_path / "host_ca", comment="host-ca")


def test_a_certificate_from_a_listed_ca_is_accepted(make_fleet, make_runner, tmp_path, pool_dir, ca):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    certify(host, ca, principals=host.address)
    results = _both(fleet, make_runner, tmp_path, ca_known_hosts(tmp_path / "known_hosts", host, ca))
    assert results["ssh"]["status"] == "ok", results
    assert results["healer.pooled_ssh.pooled_ssh"]["status"] == "ok", results


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("expired", "Certificate invalid: expired"),
        ("wrong-principal", "Certificate invalid: name is not a listed principal"),
        ("revoked-ca", "marked @revoked"),
    ],
)
def test_a_bad_certificate_is_refused_with_a_clear_line(make_fleet, make_runner, tmp_path, pool_dir, ca, case, words):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    certify(
        host,
        ca,
        principals="other.example.com" if case == "wrong-principal" else host.address,
        validity="20200101:20200102" if case == "expired" else "-5m:+1h",
    )
    known_hosts = ca_known_hosts(tmp_path / "known_hosts", host, ca, revoked=case == "revoked-ca")
    results = _both(fleet, make_runner, tmp_path, known_hosts)
    assert results["ssh"]["status"] == "unreachable", results
    pooled = results["healer.pooled_ssh.pooled_ssh"]
    assert pooled["status"] == "unreachable", results
    msg = pooled["msg"]
    assert words in msg and f"{host.address}:{host.port}" in msg, msg
    assert "\n" not in msg.strip() and "ssh-keyscan" not in msg, msg
    assert host.accepted_count() == 0, "refused before any credential was sent"
