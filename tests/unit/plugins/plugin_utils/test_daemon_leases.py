"""Every handler that takes a lease gives it back, whatever fails in the middle of its request.

A real session, pool and handlers over a socket pair; the SSH wire is fake. Each case breaks
one step inside a request after its lease was taken (a bug: an unexpected exception; or the
worker going away mid-command) and checks that the pool counts no channel in use afterwards,
and that the next request on a fresh conversation is served.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import paramiko
import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import exec as exec_mod
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import transfer as transfer_mod
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import xrun as xrun_mod
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames
from daemon_fakes import FakeDaemon, Worker, wait_for
from fake_ssh import FakeServer, FakeSFTP


def sh(cmd: str, stdin: bytes) -> Optional[Tuple[bytes, bytes, int]]:
    if cmd == "sleep forever":
        return None
    proc = subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, timeout=30, check=False)
    return proc.stdout, proc.stderr, proc.returncode


def in_use(daemon: FakeDaemon) -> int:
    return int(daemon.pool.stats()["total"].get("channelsInUse", 0))


class Broken(RuntimeError):
    """The failure each case injects: nothing the daemon expects."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Broken("injected")


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Tuple[FakeServer, FakeDaemon, Path]]:
    monkeypatch.setattr(paramiko, "SFTPClient", FakeSFTP)
    remote = tmp_path / "remote"
    remote.mkdir()
    sftp = getattr(request, "param", True)
    server = FakeServer(handler=sh, sftp_root=remote if sftp else None, immediate=lambda cmd: cmd == "sleep forever")
    daemon = FakeDaemon(server)
    yield server, daemon, remote
    daemon.pool.close_all()
    for t in server.transports:
        t.release_fds()


def request_for(op: str, tmp_path: Path, remote: Path) -> Tuple[Dict[str, Any], bytes]:
    if op == "exec":
        return {"op": "exec", "id": 5, "cmd": "echo hi"}, b""
    if op == "xrun":
        return {
            "op": "xrun",
            "id": 5,
            "key": "python3",
            "start": "python3 -c pass",
            "head_len": 1,
            "zip_len": 1,
        }, b"hzt"
    src = tmp_path / "src.txt"
    src.write_text("data")
    (remote / "there.txt").write_text("data")
    local, far = (src, remote / "dest.txt") if op == "put" else (tmp_path / "got.txt", remote / "there.txt")
    return {"op": op, "id": 5, "local": str(local), "remote": str(far)}, b""


CASES = [
    ("exec", exec_mod, "relay", True),  # the relay broke after the command started
    ("exec", exec_mod, "prime_spare", True),  # between the start and the relay
    ("xrun", xrun_mod, "_executor", True),
    ("put", transfer_mod, "_sftp_copy", True),
    ("fetch", transfer_mod, "_sftp_copy", True),
    ("put", transfer_mod, "_cat_stream", False),  # no SFTP: through cat
    ("fetch", transfer_mod, "_cat_stream", False),
]


@pytest.mark.parametrize(
    ("op", "module", "step", "setup"),
    [(*c[:3], c[3]) for c in CASES],
    indirect=["setup"],
    ids=[f"{c[0]}-{c[2]}" for c in CASES],
)
def test_a_failure_mid_request_gives_the_lease_back(
    op: str,
    module: Any,
    step: str,
    setup: Tuple[FakeServer, FakeDaemon, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _server, daemon, remote = setup
    message, payload = request_for(op, tmp_path, remote)
    worker = Worker(daemon)
    worker.bind()
    monkeypatch.setattr(module, step, boom)
    worker.send(message, payload)
    replies = worker.replies(5)
    final = replies[-1][0]
    assert final["t"] == "error" and final["kind"] == "internal" and "Broken('injected')" in final["msg"], final
    assert len(daemon.pool.snapshot()) == 1  # a lease was taken (a transport opened) before the failure
    assert in_use(daemon) == 0  # the error reply is sent once the handler is over: no wait needed
    worker.close()
    # The pool serves the next conversation.
    monkeypatch.undo()
    monkeypatch.setattr(paramiko, "SFTPClient", FakeSFTP)
    again = Worker(daemon)
    again.bind()
    out, _err, reply = again.run(9, "echo again")
    assert reply == {"t": "exit", "re": 9, "rc": 0} and out == b"again\n"
    wait_for(lambda: in_use(daemon) == 0, "the exec to give its lease back after its exit status")
    again.close()


def test_a_worker_gone_mid_command_gives_the_lease_back(setup: Tuple[FakeServer, FakeDaemon, Path]) -> None:
    _server, daemon, _root = setup
    worker = Worker(daemon)
    worker.bind()
    worker.send({"op": "exec", "id": 5, "cmd": "sleep forever", "eof": False})
    reply, _payload = frames.recv_frame(worker.sock)
    assert reply["t"] == "started" and in_use(daemon) == 1
    worker.close()
    wait_for(lambda: in_use(daemon) == 0, "the channel to be given back")


def test_warm_through_a_session_opens_the_transport_the_next_exec_takes(
    setup: Tuple[FakeServer, FakeDaemon, Path],
) -> None:
    """The daemon side of connection warming: bind + warm from one worker, an exec from the next."""
    server, daemon, _remote = setup
    warmer_worker = Worker(daemon)
    warmer_worker.bind()
    warmer_worker.send({"op": "warm", "id": 2})
    assert warmer_worker.replies(2) == [({"t": "ok", "re": 2}, b"")]
    warmer_worker.close()
    wait_for(lambda: daemon.warmer.counters.opened == 1, "the warm handshake")
    assert len(server.transports) == 1
    worker = Worker(daemon)
    worker.bind()
    out, _err, final = worker.run(2, "echo hi")
    assert out == b"hi\n" and final["rc"] == 0
    assert len(server.transports) == 1, "the exec took the warmed transport: no second login"
    stats = daemon.pool.stats()["total"]
    assert stats["poolMisses"] == 1 and stats["poolHits"] == 0, stats
    worker.close()
