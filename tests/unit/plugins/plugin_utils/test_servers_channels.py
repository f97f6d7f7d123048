"""A refused channel open on a live transport, on every path that opens one: exec, put and fetch,
the spare channel, the remote executor. The server said "not now" (MaxSessions, a slot its
sftp-server still holds): wait on that transport, give back what it keeps open for later, never
take it for dead (a new login) and never remember "not possible here".

A real session and pool, real exec/transfer/spare/xrun code; only the SSH wire is fake (fake_ssh.py),
and the remote executor's side of its protocol (FakeExecutorIO).
"""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import paramiko
import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import xrun
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import remote
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor.manager import SOURCE
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames
from daemon_fakes import FINAL, TIMEOUT, FakeDaemon, Worker, wait_for
from fake_ssh import FakeChannel, FakeServer, FakeSFTP
from test_daemon_transfer import sh


class FakeExecutorIO:
    """The remote executor's end of its channel: takes the source, answers hello, and each run
    prints ``ran`` and exits 0. The fake channel under it holds one of the server's sessions."""

    def __init__(self, chan: FakeChannel) -> None:
        self.chan = chan
        self.source_left = len(SOURCE)
        self.inbox = b""
        self.outbox: queue.Queue[bytes] = queue.Queue()
        self.pending = b""

    def _reply(self, kind: int, rid: int, body: bytes) -> None:
        self.outbox.put(remote.HEADER.pack(len(body), kind, rid) + body)

    def write(self, data: bytes) -> None:
        if self.chan.closed:
            raise OSError("Socket is closed")
        skip = min(len(data), self.source_left)
        self.source_left -= skip
        self.inbox += data[skip:]
        while len(self.inbox) >= remote.HEADER.size:
            size, kind, rid = remote.HEADER.unpack_from(self.inbox)
            if len(self.inbox) < remote.HEADER.size + size:
                return
            self.inbox = self.inbox[remote.HEADER.size + size :]
            if kind == remote.K_INIT:
                self._reply(
                    remote.K_HELLO, 0, json.dumps({"version": remote.VERSION, "python": [3, 12], "pid": 1}).encode()
                )
            elif kind == remote.K_RUN:
                self._reply(remote.K_OUT, rid, b"ran\n")
                self._reply(remote.K_EXIT, rid, b'{"rc": 0}')

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        if not self.pending:
            try:
                self.pending = self.outbox.get(timeout=TIMEOUT if timeout is None else timeout)
            except queue.Empty:
                if timeout is None:
                    return b""
                raise TimeoutError from None
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def close(self) -> None:
        self.outbox.put(b"")
        self.chan.close()

    def ended(self) -> bool:
        return bool(self.chan.closed)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.setattr(paramiko, "SFTPClient", FakeSFTP)
    monkeypatch.setattr(xrun, "_ChannelIO", FakeExecutorIO)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    return FakeServer(handler=sh, sftp_root=remote_dir)


def run_xrun(worker: Worker, op_id: int) -> List[Tuple[Dict[str, Any], bytes]]:
    head, zip_text, tail = b"head", b"zip", b"tail"
    worker.send(
        {
            "op": "xrun",
            "id": op_id,
            "key": "python3",
            "start": "python3 -c executor",
            "head_len": len(head),
            "zip_len": len(zip_text),
        },
        head + zip_text + tail,
    )
    replies = []
    while True:  # up to the exit, the error, or the fallback (nothing ran: the worker goes the plain way)
        reply, data = frames.recv_frame(worker.sock)
        assert reply.get("re") == op_id, (op_id, reply)
        replies.append((reply, data))
        if reply["t"] in (*FINAL, "fallback"):
            return replies


def final(replies: List[Tuple[Dict[str, Any], bytes]]) -> Dict[str, Any]:
    return replies[-1][0]


def test_an_idle_executor_gives_its_session_back_when_the_server_refuses_a_channel(
    worker: Worker, server: FakeServer, daemon: FakeDaemon
) -> None:
    server.max_sessions = 1
    replies = run_xrun(worker, 2)
    assert final(replies) == {"t": "exit", "re": 2, "rc": 0}, replies
    assert b"".join(data for reply, data in replies if reply["t"] == "out") == b"ran\n"
    # The executor's channel holds the server's one session: the command's open is refused.
    out, _err, reply = worker.run(3, "echo after")
    assert (out, reply["rc"]) == (b"after\n", 0), reply
    assert server.transports[0].refused >= 1
    assert len(server.transports) == 1, "the refusal made a new login"
    # From now on the transport keeps no executor: it would hold the one session for good.
    reply = final(run_xrun(worker, 4))
    assert reply["t"] == "fallback" and reply["reason"] == xrun.FEW_SESSIONS, reply
    assert worker.run(5, "echo again")[0] == b"again\n"
    assert len(server.transports) == 1


def test_an_executor_refused_a_channel_is_tried_again_on_the_next_run(worker: Worker, server: FakeServer) -> None:
    server.max_sessions = 0  # full at the moment the executor starts
    reply = final(run_xrun(worker, 2))
    assert reply["t"] == "fallback" and "no channel for the executor" in reply["reason"], reply
    server.max_sessions = 10
    assert final(run_xrun(worker, 3)) == {"t": "exit", "re": 3, "rc": 0}
    assert len(server.transports) == 1


def test_an_executor_whose_exec_the_server_refuses_falls_back_with_nothing_run(
    worker: Worker, server: FakeServer
) -> None:
    # The executor's source goes right behind its exec request; a refused exec must still be told
    # from a started one (the reply comes first): a fallback, and the executor never saw a run.
    server.refuse_exec = True
    started = xrun.counters()["started"]
    reply = final(run_xrun(worker, 2))
    assert reply["t"] == "fallback" and reply["reason"] == "the server refused the executor's exec request", reply
    assert xrun.counters()["started"] == started
    assert len(server.transports) == 1


@pytest.mark.parametrize("as_text", [False, True], ids=["ChannelException", "text-only"])
def test_a_refused_spare_turns_spares_off_however_paramiko_says_it(
    worker: Worker, server: FakeServer, daemon: FakeDaemon, as_text: bool
) -> None:
    server.max_sessions = 1
    server.refusal_as_text = as_text
    worker.run(2, "echo 1")
    pt = daemon.pool.entries()[0].conn
    wait_for(lambda: pt.spare_pending is None, "the spare attempt")
    assert pt.spare_off and pt.spare is None
    assert worker.run(3, "echo 2")[0] == b"2\n"
    assert len(server.transports) == 1


@pytest.mark.parametrize("as_text", [False, True], ids=["ChannelException", "text-only"])
def test_max_sessions_1_with_slots_freed_late_keeps_one_transport(
    worker: Worker, server: FakeServer, tmp_path: Path, as_text: bool
) -> None:
    """Every closed channel holds its slot for two more opens, as sshd holds an SFTP session's
    until its sftp-server exited: 25 puts, fetches and commands, one transport."""
    server.max_sessions = 1
    server.slot_held_opens = 2
    server.refusal_as_text = as_text
    src = tmp_path / "src.txt"
    src.write_text("payload\n", encoding="utf-8")
    root = server.sftp_root
    assert root is not None
    for i in range(25):
        worker.send({"op": "put", "id": 10 + i, "local": str(src), "remote": str(root / f"f{i}")})
        assert final(worker.replies(10 + i))["t"] == "done"
        worker.send({"op": "fetch", "id": 100 + i, "local": str(tmp_path / f"back{i}"), "remote": str(root / f"f{i}")})
        assert final(worker.replies(100 + i))["t"] == "done"
        out, _err, reply = worker.run(200 + i, f"echo {i}")
        assert (out, reply["rc"]) == (f"{i}\n".encode(), 0), reply
    assert [p.read_text(encoding="utf-8") for p in sorted(tmp_path.glob("back*"))] == ["payload\n"] * 25
    assert server.transports[0].refused > 0, "the server never refused: the test proves nothing"
    assert len(server.transports) == 1
