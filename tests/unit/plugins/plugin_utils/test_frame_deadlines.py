"""A peer that trickles bytes cannot keep a frame read alive past its deadline."""

from __future__ import annotations

import socket
import time

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames


def test_half_a_header_then_silence_ends_at_the_frame_timeout() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frames.encode({"op": "ping"})[:5])
        with pytest.raises(socket.timeout):
            frames.recv_frame(b, frame_timeout=0.2)


def test_the_hello_deadline_is_absolute() -> None:
    a, b = socket.socketpair()
    with a, b:
        data = frames.encode({"op": "hello"})
        deadline = time.monotonic() + 0.3
        a.sendall(data[:1])  # one byte now: a per-recv timeout would start again with each
        with pytest.raises(socket.timeout):
            frames.recv_frame(b, deadline=deadline)


def test_a_whole_frame_in_time_is_read_and_the_timeout_restored() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(7.0)
        a.sendall(frames.encode({"op": "ping", "id": 1}, b"xy"))
        assert frames.recv_frame(b, deadline=time.monotonic() + 5, frame_timeout=5) == ({"op": "ping", "id": 1}, b"xy")
        assert b.gettimeout() == 7.0
