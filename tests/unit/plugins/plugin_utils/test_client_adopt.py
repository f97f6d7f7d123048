"""A worker's socket connected ahead of its first request (the early open), taken by its client.

A socket pair stands in for the daemon's socket; the test's thread answers the client's hello as the
daemon does, or does not.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Iterator, List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._client import PoolClient
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames


def answer_hello(sock: socket.socket) -> None:
    request, _payload = frames.recv_frame(sock)
    assert request["op"] == "hello"
    frames.send_frame(sock, {"t": "hello", "version": frames.PROTOCOL_VERSION, "pid": 4242})


def close_at_once(sock: socket.socket) -> None:
    frames.recv_frame(sock)
    sock.close()  # a daemon leaving on its idle timeout


@pytest.fixture
def daemon_side() -> Iterator[Callable[[Callable[[socket.socket], None]], socket.socket]]:
    threads: List[threading.Thread] = []
    ends: List[socket.socket] = []

    def start(behaviour: Callable[[socket.socket], None]) -> socket.socket:
        worker, daemon = socket.socketpair()
        ends.append(daemon)
        thread = threading.Thread(target=behaviour, args=(daemon,), daemon=True)
        thread.start()
        threads.append(thread)
        return worker

    yield start
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    for end in ends:
        end.close()


def client(tmp_path) -> PoolClient:
    return PoolClient(str(tmp_path), spawn=False)


def test_an_adopted_socket_is_the_clients_after_its_hello(tmp_path, daemon_side) -> None:
    pool = client(tmp_path)
    sock = daemon_side(answer_hello)
    pool.adopt(sock)
    assert pool.daemon_pid == 4242
    assert pool._socket() is sock  # no second connection: the pool dir holds no daemon at all
    pool.close()


def test_a_socket_whose_daemon_leaves_before_hello_is_dropped(tmp_path, daemon_side) -> None:
    pool = client(tmp_path)
    sock = daemon_side(close_at_once)
    pool.adopt(sock)
    assert sock.fileno() == -1  # closed: the next request connects again, and reports, as usual
    assert pool._sock is None


def test_a_client_already_connected_keeps_its_socket_and_closes_the_early_one(tmp_path, daemon_side) -> None:
    pool = client(tmp_path)
    first = daemon_side(answer_hello)
    pool.adopt(first)
    second, spare = socket.socketpair()
    pool.adopt(second)
    assert second.fileno() == -1 and pool._socket() is first
    spare.close()
    pool.close()
