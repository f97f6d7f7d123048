"""``frames.peer_closed``: how the daemon (a worker gone mid-run) and the worker (a daemon that
dropped an idle connection) find out the other side left, without reading what it sent.

Both places had their own copy: the daemon's used ``select.select`` (``ValueError`` for a descriptor
from 1024 on, which a daemon at a thousand transports has); the worker's peeked with
``MSG_DONTWAIT``, which on a socket with a timeout waits the timeout out first and then reads the
timeout as a close.
"""

from __future__ import annotations

import os
import resource
import socket
from typing import Iterator, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames

HIGH_FD = 1500


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def test_an_open_idle_peer_has_not_closed(pair: Tuple[socket.socket, socket.socket]) -> None:
    _a, b = pair
    assert frames.peer_closed(b) is False


def test_a_socket_with_a_timeout_is_not_taken_for_closed(pair: Tuple[socket.socket, socket.socket]) -> None:
    _a, b = pair
    b.settimeout(0.05)  # the old peek waited this out, then read socket.timeout (an OSError) as "closed"
    assert frames.peer_closed(b) is False
    assert b.gettimeout() == 0.05


def test_pending_data_is_not_a_close_and_is_left_unread(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"x")
    assert frames.peer_closed(b) is False
    b.settimeout(1)
    assert b.recv(1) == b"x"


def test_a_peer_that_closed_is_seen(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    assert frames.peer_closed(b) is True
    b.settimeout(0.05)
    assert frames.peer_closed(b) is True


def test_a_reset_peer_is_seen() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _addr = listener.accept()
        with client, server:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()  # linger 0: an RST, not a FIN
            assert frames.peer_closed(server) is True


def test_our_own_closed_socket_counts_as_closed(pair: Tuple[socket.socket, socket.socket]) -> None:
    _a, b = pair
    b.close()
    assert frames.peer_closed(b) is True


@pytest.fixture
def high_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A socket pair whose second end sits on descriptor 1500, as at a thousand transports."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.skip(f"the hard descriptor limit {hard} is below {HIGH_FD} (CI's is far above)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH_FD + 1), hard))
    a, b = socket.socketpair()
    try:
        os.dup2(b.fileno(), HIGH_FD)
        b.close()
        high = socket.socket(fileno=HIGH_FD)
        with a, high:
            yield a, high
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_descriptor_above_1024_works(high_pair: Tuple[socket.socket, socket.socket]) -> None:
    a, high = high_pair
    assert high.fileno() == HIGH_FD
    assert frames.peer_closed(high) is False
    a.close()
    assert frames.peer_closed(high) is True
