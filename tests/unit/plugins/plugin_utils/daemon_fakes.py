"""A daemon's session over a socket pair, with transports from a fake server (tests only)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.session import Session
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.warm import Warmer
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.core import Pool
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import PoolKey
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.connect import AuthFailures, Target
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.transport import PooledTransport
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames
from fake_ssh import FakeServer

SPEC: Dict[str, Any] = {"host": "web1", "addr": "127.0.0.9", "port": 2222, "user": "deploy"}
FINAL = ("exit", "error", "done", "ok", "pong", "bound", "stats", "status")
TIMEOUT = 10.0


class FakeConnector:
    """Opens "transports" on the fake server."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.targets: List[Target] = []
        self.auth_failures = AuthFailures()

    def connect(self, key: PoolKey, target: Target) -> PooledTransport:
        self.targets.append(target)
        return PooledTransport(self.server.transport(), key.label)  # type: ignore[arg-type]

    def forget_auth_failures(self, match: Any) -> int:
        return self.auth_failures.forget(match)


class FakeDaemon:
    """What a session needs of the daemon."""

    def __init__(self, server: FakeServer) -> None:
        self.salt = b"test-salt"
        self.stopping = threading.Event()
        self.requests = 0
        self.started = time.time()
        self.socket_path = "pool.sock"
        self.connector = FakeConnector(server)
        self.pool: Pool[PooledTransport] = Pool(self.connector)
        self.warmer = Warmer()

    def client_count(self) -> int:
        return 1


class Worker:
    """The worker's end of one conversation (raw frames, so tests can send what PoolClient never would)."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(TIMEOUT)
        self.thread = threading.Thread(target=Session(daemon, theirs).run, daemon=True)  # type: ignore[arg-type]
        self.thread.start()
        frames.send_frame(self.sock, {"op": "hello", "version": frames.PROTOCOL_VERSION})
        assert frames.recv_frame(self.sock)[0]["t"] == "hello"

    def send(self, message: Dict[str, Any], payload: bytes = b"") -> None:
        frames.send_frame(self.sock, message, payload)

    def replies(self, op_id: Optional[int]) -> List[Tuple[Dict[str, Any], bytes]]:
        """Every reply up to the final one of ``op_id`` (each must answer ``op_id``)."""
        out = []
        while True:
            reply, data = frames.recv_frame(self.sock)
            assert reply.get("re") == op_id, (op_id, reply)
            out.append((reply, data))
            if reply["t"] in FINAL:
                return out

    def bind(self, op_id: int = 1, **spec: Any) -> None:
        self.send({"op": "bind", "id": op_id, "conn": dict(SPEC, **spec), "pool": {}})
        assert self.replies(op_id) == [({"t": "bound", "re": op_id}, b"")]

    def run(self, op_id: int, cmd: str, stdin: bytes = b"", **fields: Any) -> Tuple[bytes, bytes, Dict[str, Any]]:
        """Run a command; (stdout, stderr, final reply)."""
        self.send(dict({"op": "exec", "id": op_id, "cmd": cmd}, **fields), stdin)
        out, err = b"", b""
        replies = self.replies(op_id)
        for reply, data in replies:
            if reply["t"] == "out":
                out += data
            elif reply["t"] == "err":
                err += data
        return out, err, replies[-1][0]

    def close(self) -> None:
        self.sock.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
