"""The worker (``PoolClient``) reads the daemon's replies while it still has input to write.

A real session over a socket pair, a real ``PoolClient``; only the SSH wire is fake. The command
behaves like ``cat`` behind a full pipe: it writes 8 MiB before it reads any input, and takes
its 8 MiB of input only once that output was read. A worker that sends all its input before
reading anything, and a daemon that waits for the worker to take its output, then wait on each
other: the worker's socket gives up after its timeout and this test fails.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator, List, Optional, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._client import PoolClient
from daemon_fakes import FakeDaemon, Worker
from fake_ssh import FakeChannel, FakeServer

SIZE = 8 * 1024 * 1024


class CatBehindAFullPipe:
    """The fake command: output first, input only once the output was read, exit at end of input."""

    def __init__(self) -> None:
        self.server: Optional[FakeServer] = None
        self.output = os.urandom(SIZE)
        self.watchers: List[threading.Thread] = []
        self.stop = threading.Event()
        self.chan: Optional[FakeChannel] = None

    def __call__(self, cmd: str, stdin: bytes) -> Optional[Tuple[bytes, bytes, int]]:
        assert self.server is not None
        if self.chan is not None:
            return b"", b"", 0  # end of input: the command exits
        chan = self.chan = self.server.transports[-1].all_channels[-1]  # the exec's (a spare comes later)
        chan.window = 0
        chan.feed(out=self.output)
        watcher = threading.Thread(target=self._open_window_when_drained, args=(chan,), daemon=True)
        self.watchers.append(watcher)
        watcher.start()
        return None  # runs until its input ends

    def _open_window_when_drained(self, chan: FakeChannel) -> None:
        while not self.stop.wait(0.01):
            if not chan.recv_ready():
                chan.window = None
                return


@pytest.fixture
def command() -> Iterator[CatBehindAFullPipe]:
    c = CatBehindAFullPipe()
    yield c
    c.stop.set()
    for w in c.watchers:
        w.join(10)


def test_large_input_and_large_output_at_once_do_not_deadlock(command: CatBehindAFullPipe) -> None:
    server = FakeServer(handler=command, immediate=lambda cmd: True)
    command.server = server
    daemon = FakeDaemon(server)
    worker = Worker(daemon)
    worker.bind()
    client = PoolClient("/nonexistent-pool-dir", spawn=False)
    client.bind({"host": "web1", "addr": "127.0.0.9", "port": 2222, "user": "deploy"}, {})
    client._sock, client._pid, client._bound = worker.sock, os.getpid(), worker.sock
    client._socket = lambda: worker.sock  # type: ignore[method-assign]
    stdin = os.urandom(SIZE)
    out = bytearray()
    rc = None
    try:
        for kind, data in client.exec_stream({"cmd": "cat"}, stdin):
            if kind == "out":
                out += data
            elif kind == "exit":
                rc = data
        assert rc == 0 and bytes(out) == command.output
        # Every byte of input reached the command, in order.
        assert command.chan is not None and command.chan.stdin == stdin
        # The conversation goes on: the next request on the same socket is answered.
        assert client.call({"op": "ping"}) == {"t": "pong"}
    finally:
        worker.close()
        daemon.pool.close_all()
        for t in server.transports:
            t.release_fds()
