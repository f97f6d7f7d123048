"""pooled_ssh against a real Dropbear server (Debian's dropbear-bin), through real ansible-playbook.

Dropbear is the SSH server of OpenWrt, many appliances and containers. Debian 12's 2022.83
closes channels early and, after a child exited, often refuses the next channel opened on the
connection ("Unable to open channel.") while the connection itself is fine.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from harness import dropbear
from harness.sshd import Fleet, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: Dropbear hosts run in mount namespaces")


@pytest.fixture
def make_dropbear(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    yield from dropbear.fleets(tmp_path)


@pytest.fixture
def nopasswd_sudo() -> Iterator[Callable[[str], None]]:
    """A sudoers drop-in letting the login user sudo without a password (removed at teardown)."""
    written = []

    def allow(user: str) -> None:
        path = Path("/etc/sudoers.d") / f"healer-pooled-{uuid.uuid4().hex[:10]}"
        tmp = path.with_name("." + path.name)  # sudo ignores names with a dot
        tmp.write_text(f"{user} ALL=(ALL) NOPASSWD: ALL\n", encoding="utf-8")
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-c", "-q", "-f", str(tmp)], check=True, timeout=30, capture_output=True)
        tmp.rename(path)
        written.append(path)

    try:
        yield allow
    finally:
        for path in written:
            path.unlink(missing_ok=True)


EVERYTHING = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: exec
      ansible.builtin.command: echo exec ran
      register: exec
    - name: copy
      ansible.builtin.copy: {{content: "copied\\n", dest: "{remote}/copied.txt"}}
    - name: fetch
      ansible.builtin.fetch: {{src: "{remote}/copied.txt", dest: "{local}/fetched.txt", flat: true}}
    - name: become
      ansible.builtin.command: id -u
      become: true
      register: root
    - ansible.builtin.assert:
        that: ["exec.stdout == 'exec ran'", "root.stdout == '0'"]
"""


@pytest.mark.parametrize("sftp", [True, False], ids=["sftp-server", "no-sftp-server"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_exec_copy_fetch_and_become(
    make_dropbear, nopasswd_sudo, make_runner, tmp_path, pool_dir, shared_dir, sftp, pipelining
):
    fleet = make_dropbear(sftp=sftp)
    nopasswd_sudo(fleet.user)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    play = EVERYTHING.format(remote=shared_dir, local=tmp_path)
    run = make_runner(fleet, pipelining=pipelining).playbook(play, inventory, timeout=600)
    assert run.rc == 0, run.output_tail()
    assert (shared_dir / "copied.txt").read_text(encoding="utf-8") == "copied\n"
    assert (tmp_path / "fetched.txt").read_text(encoding="utf-8") == "copied\n"
    assert fleet.hosts[0].accepted_count("publickey") == 1, fleet.hosts[0].log_tail()
    _assert_transfer_path(pool_dir, sftp)


def _assert_transfer_path(pool_dir: Path, sftp: bool) -> None:
    """Transfers went over SFTP where the host has an SFTP server, through cat where it has none."""
    log = (pool_dir / "daemon.log").read_text(encoding="utf-8", errors="replace")
    through_cat = "has no SFTP subsystem" in log and "transferring through cat" in log
    if sftp:
        assert "Opened sftp connection" in log and not through_cat, log[-3000:]
    else:
        assert through_cat, log[-3000:]


@pytest.mark.parametrize("sftp", [True, False], ids=["sftp-server", "no-sftp-server"])
def test_25_copies_three_rounds_no_failure_one_login(make_dropbear, make_runner, tmp_path, pool_dir, shared_dir, sftp):
    fleet = make_dropbear(sftp=sftp)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    host = fleet.hosts[0]
    runner = make_runner(fleet)
    for round_ in range(3):
        play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: copies
      ansible.builtin.copy:
        content: "round {round_} copy {{{{ item }}}}\\n"
        dest: "{shared_dir}/r{round_}-{{{{ item }}}}"
      loop: "{{{{ range(25) | list }}}}"
"""
        run = runner.playbook(play, inventory, timeout=600)
        assert run.rc == 0, f"round {round_}:\n{run.output_tail()}"
        assert run.recap()["db1"]["failed"] == 0
    for round_ in range(3):
        for i in range(25):
            assert (shared_dir / f"r{round_}-{i}").read_text(encoding="utf-8") == f"round {round_} copy {i}\n"
    assert host.accepted_count("publickey") == 1, host.log_tail()
    _assert_transfer_path(pool_dir, sftp)
    print(
        f"\nDropbear {dropbear.dropbear_version()} ({'with' if sftp else 'without'} sftp-server): 75/75 copies, "
        f"{host.accepted_count('publickey')} login(s)"
    )
