"""Tests of the Dropbear hosts and private homes of the harness: real servers, real Paramiko."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import paramiko
import pytest

from harness import dropbear
from harness.dropbear import SFTP_SERVER, DropbearFleet, dropbear_version
from harness.sshd import Fleet, home_of, is_root, pid_alive
from harness.test_harness import connect, run

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: servers in mount namespaces of their own")

NOISE = "Welcome to the noisy shell"


@pytest.fixture
def make_dropbear(tmp_path: Path) -> Iterator[Callable[..., DropbearFleet]]:
    yield from dropbear.fleets(tmp_path)


def test_dropbear_runs_commands_as_the_test_user(make_dropbear: Callable[..., DropbearFleet]) -> None:
    fleet = make_dropbear()
    host = fleet.hosts[0]
    assert dropbear_version().startswith("20")
    with connect(host, fleet) as client:
        rc, out = run(client, "id -un; echo $HOME; cat ~/.bashrc | wc -c")
    assert rc == 0
    assert out.split() == [host.user, home_of(host.user), "0"]
    assert host.accepted_count("publickey") == 1
    assert host.accepted_count("password") == 0


def test_dropbear_with_and_without_sftp(make_dropbear: Callable[..., DropbearFleet]) -> None:
    with_sftp = make_dropbear(sftp=True)
    without = make_dropbear(sftp=False)
    with connect(with_sftp.hosts[0], with_sftp) as client:
        sftp = client.open_sftp()
        try:
            assert sftp.stat(".").st_mode is not None
        finally:
            sftp.close()
    with connect(without.hosts[0], without) as client, pytest.raises((paramiko.SSHException, EOFError)):
        client.open_sftp()
    # A fresh connection: Dropbear 2022.83 often refuses the channel opened after one whose
    # child exited early ("Unable to open channel.").
    with connect(without.hosts[0], without) as client:
        rc, out = run(client, f"test -e {SFTP_SERVER} && echo present || echo absent")
        assert (rc, out.strip()) == (0, "absent")
    # Hidden only inside that server's namespace.
    assert os.access(os.path.realpath(SFTP_SERVER), os.X_OK)


def test_a_private_home_makes_the_shell_noisy_on_that_host_only(
    make_dropbear: Callable[..., DropbearFleet], make_fleet: Callable[..., Fleet]
) -> None:
    rc_line = f"echo '{NOISE}'\n"
    noisy_dropbear = make_dropbear(shell_rc=rc_line)
    noisy_sshd = make_fleet(count=1, shell_rc=rc_line)
    quiet_sshd = make_fleet(count=1)
    for fleet in (noisy_dropbear, noisy_sshd):
        with connect(fleet.hosts[0], fleet) as client:
            rc, out = run(client, "echo done")
        assert (rc, out.splitlines()) == (0, [NOISE, "done"]), fleet
    with connect(quiet_sshd.hosts[0], quiet_sshd) as client:
        rc, out = run(client, "echo done")
    assert (rc, out) == (0, "done\n")
    real_rc = Path(home_of(noisy_sshd.user), ".bashrc")
    assert not real_rc.exists() or NOISE not in real_rc.read_text(encoding="utf-8", errors="replace")


def test_dropbear_stop_leaves_no_process(make_dropbear: Callable[..., DropbearFleet]) -> None:
    fleet = make_dropbear()
    host = fleet.hosts[0]
    client = connect(host, fleet)
    try:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=10)
        chan.exec_command("sleep 300")
        pid = host.pid
        assert pid is not None
        sessions = host.session_pids()
        assert sessions
        assert host.kill_sessions() == len(sessions)
        assert chan.recv_exit_status() == -1
        host.stop()
        assert not pid_alive(pid)
        assert not host.leftover_commands()
    finally:
        client.close()
