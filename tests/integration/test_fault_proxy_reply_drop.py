"""The fault proxy's reply drop on plain sockets: what it forwards, what it swallows, when it triggers."""

from __future__ import annotations

import socket
import threading
from typing import List

import pytest
from harness.proxy import FaultProxy
from harness.sshd import wait_until


class Echo:
    """A loopback server that records what it received and echoes it back."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.conns: List[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            conn, _addr = self.listener.accept()
        except OSError:
            return
        self.conns.append(conn)
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data
            try:
                conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()
        self.thread.join(10)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


@pytest.fixture
def echo():
    server = Echo()
    try:
        yield server
    finally:
        server.close()


def test_reply_drop_forwards_the_big_write_swallows_answers_then_resets(echo):
    with FaultProxy(("127.0.0.1", echo.port)) as proxy:
        armed = [False]
        fault = proxy.drop_replies_after(1000, when=lambda: armed[0])
        client = socket.create_connection((proxy.address, proxy.port), timeout=10)
        try:
            client.sendall(b"a" * 2000)  # big, but `when` does not hold yet: answered
            assert recv_exactly(client, 2000) == b"a" * 2000
            armed[0] = True
            client.sendall(b"small")  # under the threshold: answered
            assert recv_exactly(client, 5) == b"small"
            assert not fault.triggered.is_set()
            client.sendall(b"b" * 3000)
            wait_until(fault.triggered.is_set, 10, what="the trigger")
            wait_until(lambda: echo.received.endswith(b"b" * 3000), 10, what="the big write to reach the server")
            client.sendall(b"after")  # still forwarded
            wait_until(lambda: echo.received.endswith(b"after"), 10, what="later client bytes to arrive")
            wait_until(lambda: fault.dropped == 3005, 10, what="the echoes to be swallowed")
            assert fault.caught == 3000
            client.settimeout(0.2)
            with pytest.raises(socket.timeout):
                client.recv(1)  # nothing came back
            client.settimeout(10)
            assert proxy.reset_all() == 1
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        finally:
            client.close()
