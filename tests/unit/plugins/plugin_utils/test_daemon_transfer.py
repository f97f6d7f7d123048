"""put and fetch (SFTP, and ``cat`` where the server has no SFTP), against a fake server whose
"remote" side is a temporary directory."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import paramiko
import pytest
from daemon_fakes import FakeDaemon, Worker
from fake_ssh import FakeServer, FakeSFTP


def sh(cmd: str, stdin: bytes) -> Tuple[bytes, bytes, int]:
    """The "remote" shell: the local one (the fake server's files are local files)."""
    proc = subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, timeout=30, check=False)
    return proc.stdout, proc.stderr, proc.returncode


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.setattr(paramiko, "SFTPClient", FakeSFTP)
    remote = tmp_path / "remote"
    remote.mkdir()
    return FakeServer(handler=sh, sftp_root=remote, immediate=lambda cmd: not cmd.startswith("cat >"))


@pytest.fixture
def worker(server: FakeServer) -> Iterator[Worker]:
    daemon = FakeDaemon(server)
    w = Worker(daemon)
    w.bind()
    yield w
    w.close()
    daemon.pool.close_all()
    for t in server.transports:
        t.release_fds()


def transfer(worker: Worker, op: str, local: Path, remote: Path, umask: Optional[int] = None) -> Dict[str, Any]:
    worker.send({"op": op, "id": 7, "local": str(local), "remote": str(remote), "umask": umask})
    return worker.replies(7)[-1][0]


def leftovers(*dirs: Path) -> list:
    return [p.name for d in dirs for p in d.iterdir() if p.name.endswith(".part")]


def test_put_lands_whole_under_its_name(worker: Worker, server: FakeServer, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    dest = server.sftp_root / "dest.bin"  # type: ignore[operator]
    dest.write_bytes(b"old")
    reply = transfer(worker, "put", src, dest)
    assert reply["t"] == "done" and reply["via"] is None, reply
    assert dest.read_bytes() == src.read_bytes()
    assert leftovers(server.sftp_root) == []  # type: ignore[arg-type]


def test_a_put_cut_midway_leaves_no_file_under_the_destination_name(
    worker: Worker, server: FakeServer, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    dest = server.sftp_root / "dest.bin"  # type: ignore[operator]
    server.cut_after = 50_000
    reply = transfer(worker, "put", src, dest)
    assert reply["kind"] == "connect", reply
    assert f"transfer of {src} failed" in reply["msg"] and "the connection was lost" in reply["msg"]
    assert f"no partial file was left at {dest}" in reply["msg"]
    assert not dest.exists()
    assert len(server.transports) == 2  # cut, tried again once on another transport (cut too), then given up
    # The first try's partial file was removed over the second transport; the last try's cannot be.
    assert len(leftovers(server.sftp_root)) == 1  # type: ignore[arg-type]
    # The next transfer gets a new transport and arrives whole.
    server.cut_after = None
    assert transfer(worker, "put", src, dest)["t"] == "done"
    assert dest.read_bytes() == src.read_bytes() and len(server.transports) == 3


@pytest.mark.parametrize("op", ["put", "fetch"])
def test_a_transfer_cut_once_is_tried_again_on_another_transport_and_lands_whole(
    op: str, worker: Worker, server: FakeServer, tmp_path: Path
) -> None:
    """The retry policy's reason: the file goes to a temporary name renamed once complete, and a
    fetch only reads, so a second try cannot leave anything the first did not."""
    local, remote = tmp_path / "local.bin", server.sftp_root / "remote.bin"  # type: ignore[operator]
    (local if op == "put" else remote).write_bytes(os.urandom(100_000))
    server.cut_after, server.cuts = 50_000, 1
    reply = transfer(worker, op, local, remote)
    assert reply["t"] == "done", reply
    assert local.read_bytes() == remote.read_bytes()
    assert len(server.transports) == 2 and not server.transports[0].active and server.transports[1].active
    assert leftovers(server.sftp_root, tmp_path) == []  # type: ignore[arg-type]


def test_missing_files_are_named(worker: Worker, server: FakeServer, tmp_path: Path) -> None:
    reply = transfer(worker, "fetch", tmp_path / "out", server.sftp_root / "nope")  # type: ignore[operator]
    assert reply["kind"] == "file" and "remote file" in reply["msg"] and "does not exist" in reply["msg"], reply
    reply = transfer(worker, "put", tmp_path / "absent", server.sftp_root / "x")  # type: ignore[operator]
    assert reply["kind"] == "file", reply


@pytest.mark.parametrize(
    ("remote_mode", "umask", "expected"),
    [
        (0o644, 0o022, 0o644),
        (0o600, 0o022, 0o600),
        (0o755, 0o027, 0o750),
        (0o444, 0o022, 0o644),  # owner-writable, as OpenSSH's sftp creates it
    ],
)
def test_a_fetched_file_gets_the_mode_ssh_would_give_it(
    worker: Worker, server: FakeServer, tmp_path: Path, remote_mode: int, umask: int, expected: int
) -> None:
    remote = server.sftp_root / "file"  # type: ignore[operator]
    remote.write_bytes(b"data")
    remote.chmod(remote_mode)
    local = tmp_path / "fetched"
    assert transfer(worker, "fetch", local, remote, umask=umask)["t"] == "done"
    assert local.read_bytes() == b"data"
    assert stat.S_IMODE(local.stat().st_mode) == expected


def test_a_fetch_over_an_existing_file_keeps_its_mode(worker: Worker, server: FakeServer, tmp_path: Path) -> None:
    remote = server.sftp_root / "file"  # type: ignore[operator]
    remote.write_bytes(b"new")
    remote.chmod(0o644)
    local = tmp_path / "fetched"
    local.write_bytes(b"old")
    local.chmod(0o640)
    assert transfer(worker, "fetch", local, remote, umask=0o022)["t"] == "done"
    assert local.read_bytes() == b"new" and stat.S_IMODE(local.stat().st_mode) == 0o640


def test_without_sftp_files_go_through_cat(worker: Worker, server: FakeServer, tmp_path: Path) -> None:
    remote_dir = server.sftp_root
    server.sftp_root = None  # no SFTP subsystem
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(50_000))
    dest = remote_dir / "dest.bin"  # type: ignore[operator]
    reply = transfer(worker, "put", src, dest)
    assert reply["t"] == "done" and reply["via"] == "cat", reply
    assert dest.read_bytes() == src.read_bytes()
    back = tmp_path / "back.bin"
    reply = transfer(worker, "fetch", back, dest, umask=0o022)
    assert reply["via"] == "cat" and back.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o644
    assert leftovers(remote_dir, tmp_path) == []  # type: ignore[arg-type]


def test_a_failed_cat_fetch_leaves_nothing(worker: Worker, server: FakeServer, tmp_path: Path) -> None:
    server.sftp_root = None
    local = tmp_path / "out"
    reply = transfer(worker, "fetch", local, tmp_path / "does-not-exist")
    assert reply["kind"] == "file" and "does not exist or cannot be read" in reply["msg"], reply
    assert not local.exists() and leftovers(tmp_path) == []
