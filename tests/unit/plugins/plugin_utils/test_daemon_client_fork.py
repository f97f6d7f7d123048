"""The worker's client against a real daemon: used after fork() (RELIABILITY.md #19), and against
whatever else may answer on the pool socket (a process of another version, garbage, silence)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from typing import Iterator, List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames as proto


@pytest.fixture
def pool_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hf-")
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        pid_path = os.path.join(path, proto.pid_name())
        if os.path.exists(pid_path):
            with open(pid_path) as fh:
                pid = int(fh.read().split()[0])
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:  # the daemon is our child (spawned by the client in this process): reap it
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.02)
        shutil.rmtree(path, ignore_errors=True)


def test_a_client_used_after_fork_reconnects_in_the_child(pool_dir: str) -> None:
    client = _client.PoolClient(pool_dir, idle_exit=60)
    try:
        assert client.call({"op": "ping"})["t"] == "pong"
        parent_sock = client._sock
        daemon_pid = client.daemon_pid
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read_end)
                reply = client.call({"op": "ping"})
                status = client.call({"op": "status"})
                ok = (
                    reply["t"] == "pong"
                    and client._sock is not parent_sock
                    and client.daemon_pid == daemon_pid
                    and status["daemon"]["clients"] == 2
                )
                os.write(write_end, json.dumps({"ok": ok, "clients": status["daemon"]["clients"]}).encode())
                client.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _unused, status = os.waitpid(child, 0)
        with os.fdopen(read_end, "rb") as fh:
            report = json.loads(fh.read() or b"{}")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert report.get("ok"), report
        # The child's close() did not close the parent's socket: the parent goes on where it was.
        assert client._sock is parent_sock
        assert client.call({"op": "ping"})["t"] == "pong"
    finally:
        client.close()


class FakeListener:
    """Something else on the pool socket: answers each connection with ``reply`` (None: never)."""

    def __init__(self, path: str, reply: bytes) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.reply = reply
        self.stop = threading.Event()
        self.conns: List[socket.socket] = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.reply:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for conn in self.conns:
            conn.close()
        self.listener.close()


def frame(message: dict, magic: bytes = proto.MAGIC) -> bytes:
    body = json.dumps(message).encode()
    return magic + struct.pack("!II", len(body), 0) + body


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "bad magic"),
        (frame({"t": "hello", "version": 0}, magic=b"HPS\x00"), f"protocol version 0 is not {proto.PROTOCOL_VERSION}"),
        (
            frame({"t": "hello", "version": 7, "pid": 1}),
            f"speaks another protocol (protocol 7; we speak {proto.PROTOCOL_VERSION})",
        ),
        (frame({"t": "error", "kind": "protocol", "msg": "go away"}), "refused us or speaks another protocol (go away"),
        (b"", "no answer within 0.5s"),
    ],
    ids=["garbage", "other-magic", "other-version-hello", "error", "silent"],
)
def test_something_else_on_the_socket_is_refused_not_waited_on(
    pool_dir: str, monkeypatch: pytest.MonkeyPatch, reply: bytes, expected: str
) -> None:
    monkeypatch.setattr(_client, "HELLO_TIMEOUT", 0.5)
    path = os.path.join(pool_dir, proto.socket_name())
    fake = FakeListener(path, reply)
    client = _client.PoolClient(pool_dir)
    try:
        with pytest.raises(_client.PoolUnavailable) as info:
            client.call({"op": "ping"})
    finally:
        client.close()
        fake.close()
    message = str(info.value)
    assert expected in message and path in message and "stop that process" in message, message
    # Nothing was started behind the impostor's back.
    assert not os.path.exists(os.path.join(pool_dir, proto.pid_name()))
