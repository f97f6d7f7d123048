# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Framing between Ansible workers and the pool daemon (the messages inside: :mod:`.messages`).

A frame is a fixed header, a JSON object and an optional binary payload::

    magic (4 bytes) | json length (uint32) | payload length (uint32) | json | payload

JSON carries the request or reply, the payload carries command input and output
so that bytes never need base64. Both parts are bounded, so a broken or hostile
peer can make the reader fail but never make it allocate without limit. No
pickle: the daemon holds authenticated sessions and must not execute what a
peer sends it.

This module is imported by both the daemon and the workers and must not import
Ansible.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any, Dict, Optional, Tuple

#: Bumped on any incompatible change. It is part of the socket's file name, so a
#: worker never even reaches a daemon of another version.
PROTOCOL_VERSION = 2
MAGIC = b"HPS" + bytes([PROTOCOL_VERSION])
HEADER = struct.Struct("!4sII")
MAX_JSON = 256 * 1024
MAX_PAYLOAD = 4 * 1024 * 1024
#: Command input is split into frames of this size.
CHUNK = 1024 * 1024

Frame = Tuple[Dict[str, Any], bytes]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


class MessageTooLarge(ProtocolError):
    """What we were about to send is larger than a frame may carry (nothing was sent)."""


class PeerClosed(ProtocolError):
    """The peer closed the socket (cleanly, or in the middle of a frame)."""


def encode(message: Dict[str, Any], payload: bytes = b"") -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_JSON:
        raise MessageTooLarge(f"message too large ({len(body)} bytes, limit {MAX_JSON})")
    if len(payload) > MAX_PAYLOAD:
        raise MessageTooLarge(f"payload too large ({len(payload)} bytes, limit {MAX_PAYLOAD})")
    return HEADER.pack(MAGIC, len(body), len(payload)) + body + payload


def decode_header(header: bytes) -> Tuple[int, int]:
    """Validate a header and return the lengths of its two parts."""
    magic, json_len, payload_len = HEADER.unpack(header)
    if magic != MAGIC:
        if magic[:3] == MAGIC[:3]:
            raise ProtocolError(f"protocol version {magic[3]} is not {PROTOCOL_VERSION}")
        raise ProtocolError("bad magic: not a pooled_ssh frame")
    if json_len > MAX_JSON or json_len == 0:
        raise ProtocolError(f"bad message length {json_len}")
    if payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"bad payload length {payload_len}")
    return json_len, payload_len


def decode_body(body: bytes) -> Dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: nesting deeper than the interpreter allows, well within MAX_JSON.
        raise ProtocolError(f"message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return message


def decode(data: bytes) -> Tuple[Frame, bytes]:
    """Decode one frame from the start of ``data``; return it and the rest.

    Raises ``ProtocolError`` when ``data`` holds no complete, valid frame.
    Used by tests and fuzzing; sockets use :func:`recv_frame`.
    """
    if len(data) < HEADER.size:
        raise ProtocolError("truncated header")
    json_len, payload_len = decode_header(data[: HEADER.size])
    end = HEADER.size + json_len + payload_len
    if len(data) < end:
        raise ProtocolError("truncated frame")
    message = decode_body(data[HEADER.size : HEADER.size + json_len])
    return (message, data[HEADER.size + json_len : end]), data[end:]


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer of a socket we are not reading has closed it (or it failed), without waiting.

    ``poll``, not ``select``: ``select`` fails for descriptors from 1024 on, which a daemon holding
    a thousand transports has. The peek runs only once ``poll`` says there is something to read: on
    a socket with a timeout, ``recv`` would otherwise wait the timeout out first (``MSG_DONTWAIT``
    or not), and a timeout is not a close.
    """
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        events = poller.poll(0)
    except (OSError, ValueError):
        return True  # closed on our side already (no descriptor)
    if not events:
        return False
    if events[0][1] & (select.POLLERR | select.POLLNVAL):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _recv_exactly(sock: socket.socket, size: int, *, at_start: bool = False, deadline: Optional[float] = None) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("frame not complete in time")
            sock.settimeout(left)
        chunk = sock.recv(min(remaining, 1024 * 1024))
        if not chunk:
            if at_start and remaining == size:
                raise PeerClosed("peer closed the connection")
            raise PeerClosed("peer closed the connection in the middle of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, deadline: Optional[float] = None, frame_timeout: Optional[float] = None) -> Frame:
    """Read one frame. ``deadline`` (monotonic) bounds the whole frame; ``frame_timeout`` bounds
    the rest of it once its first bytes arrived (the wait for them keeps the socket's timeout).
    A peer sending one byte at a time cannot keep a read alive past either."""
    if deadline is None and frame_timeout is None:
        header = _recv_exactly(sock, HEADER.size, at_start=True)
        json_len, payload_len = decode_header(header)
        body = _recv_exactly(sock, json_len)
        payload = _recv_exactly(sock, payload_len) if payload_len else b""
        return decode_body(body), payload
    previous = sock.gettimeout()
    try:
        first = _recv_exactly(sock, 1, at_start=True, deadline=deadline)
        if frame_timeout is not None:
            rest = time.monotonic() + frame_timeout
            deadline = rest if deadline is None else min(deadline, rest)
        header = first + _recv_exactly(sock, HEADER.size - 1, deadline=deadline)
        json_len, payload_len = decode_header(header)
        body = _recv_exactly(sock, json_len, deadline=deadline)
        payload = _recv_exactly(sock, payload_len, deadline=deadline) if payload_len else b""
    finally:
        sock.settimeout(previous)
    return decode_body(body), payload


def send_frame(sock: socket.socket, message: Dict[str, Any], payload: bytes = b"") -> None:
    sock.sendall(encode(message, payload))


def socket_name(version: Optional[int] = None) -> str:
    return f"pool-v{PROTOCOL_VERSION if version is None else version}.sock"


def pid_name(version: Optional[int] = None) -> str:
    """The daemon's pid file: one per protocol version, as its socket and lock are (a daemon of
    another version in the same directory neither overwrites ours nor keeps us from removing it)."""
    return f"daemon-v{PROTOCOL_VERSION if version is None else version}.pid"
