"""The collection as users get it: built, installed with ansible-galaxy, run by FQCN and short name."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from harness.ansible import REPO_ROOT

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: echo installed
      register: out
    - ansible.builtin.assert:
        that: out.stdout == 'installed'
"""

FORBIDDEN = (
    "tests/",
    "benchmarks/",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".git/",
    ".ci/",
    ".pyc",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    import subprocess
    import sys

    galaxy = str(Path(sys.executable).parent / "ansible-galaxy")
    subprocess.run(
        [galaxy, "collection", "build", str(REPO_ROOT), "--output-path", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = out.glob("healer-pooled_ssh-*.tar.gz")
    return tarball


def test_built_tarball_holds_no_tests_or_caches(built: Path) -> None:
    with tarfile.open(built) as tar:
        names = tar.getnames()
    assert "plugins/connection/pooled_ssh.py" in names
    assert "plugins/plugin_utils/daemon/server.py" in names
    assert "MANIFEST.json" in names
    leaked = [n for n in names if any(bad in n for bad in FORBIDDEN)]
    assert leaked == []


@pytest.mark.parametrize("source", ["tarball", "checkout"])
def test_installed_collection_runs_by_fqcn_and_short_name(source, built, make_fleet, make_runner, tmp_path):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet)
    dest = tmp_path / "collections"
    env = {"ANSIBLE_COLLECTIONS_PATH": str(dest)}
    installed = runner.run(
        [
            runner.executable("ansible-galaxy"),
            "collection",
            "install",
            str(built if source == "tarball" else REPO_ROOT),
            "-p",
            str(dest),
        ],
        env=env,
    )
    assert installed.rc == 0, installed.output_tail()
    plugin_dir = dest / "ansible_collections" / "healer" / "pooled_ssh" / "plugins" / "connection"
    assert (plugin_dir / "pooled_ssh.py").is_file()
    assert not (dest / "ansible_collections" / "healer" / "pooled_ssh" / "tests").exists()

    fqcn = runner.playbook(PLAY, fleet.write_inventory(tmp_path / "fqcn.yml"), env=env)
    assert fqcn.rc == 0, fqcn.output_tail()

    # The short name needs the plugin's directory on connection_plugins: one line of config.
    short_inventory = fleet.write_inventory(tmp_path / "short.yml", connection="pooled_ssh")
    short = runner.playbook(PLAY, short_inventory, env=dict(env, ANSIBLE_CONNECTION_PLUGINS=str(plugin_dir)))
    assert short.rc == 0, short.output_tail()
    # Both runs shared one pool: one handshake in all.
    assert fleet.hosts[0].accepted_count("publickey") == 1
