"""The frame format between workers and the pool daemon: round trips, limits and hostile input."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Iterator, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import ErrorKind
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames as proto
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import messages as msgs
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.frames import (
    HEADER,
    MAGIC,
    MAX_JSON,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    PeerClosed,
    ProtocolError,
    decode,
    decode_header,
    encode,
    recv_frame,
    send_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def header(json_len: int, payload_len: int, magic: bytes = MAGIC) -> bytes:
    return HEADER.pack(magic, json_len, payload_len)


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# -- encode / decode -------------------------------------------------------------------


def test_header_layout_is_magic_then_two_big_endian_lengths() -> None:
    frame = encode({"op": "hello"}, b"xyz")
    assert frame[:4] == b"HPS" + bytes([PROTOCOL_VERSION])
    json_len, payload_len = struct.unpack("!II", frame[4:12])
    assert frame[12 : 12 + json_len] == b'{"op":"hello"}'
    assert payload_len == 3
    assert frame[12 + json_len :] == b"xyz"


def test_round_trip_unicode_json_and_binary_payload() -> None:
    message = {
        "op": "exec",
        "cmd": "echo 'h\u00e9llo w\u00f6rld \u2603 \U0001f600'",
        "n": [1, 2.5, None, True],
        "nested": {"k": "\u00fc"},
    }
    payload = bytes(range(256)) * 3
    (decoded, data), rest = decode(encode(message, payload))
    assert decoded == message
    assert data == payload
    assert rest == b""


def test_round_trip_empty_payload() -> None:
    (decoded, data), rest = decode(encode({"t": "exit", "rc": 0}))
    assert decoded == {"t": "exit", "rc": 0}
    assert data == b""
    assert rest == b""


def test_round_trip_payload_of_maximum_size() -> None:
    payload = b"\xff\x00" * (MAX_PAYLOAD // 2)
    assert len(payload) == MAX_PAYLOAD
    (decoded, data), rest = decode(encode({"op": "stdin"}, payload))
    assert decoded == {"op": "stdin"}
    assert data == payload
    assert rest == b""


def test_decode_returns_the_bytes_after_the_first_frame() -> None:
    first = encode({"n": 1}, b"a")
    second = encode({"n": 2}, b"bb")
    (msg, data), rest = decode(first + second + b"tail")
    assert (msg, data) == ({"n": 1}, b"a")
    (msg, data), rest = decode(rest)
    assert (msg, data) == ({"n": 2}, b"bb")
    assert rest == b"tail"


def test_encode_refuses_payload_over_the_limit() -> None:
    with pytest.raises(ProtocolError, match="payload too large"):
        encode({"op": "stdin"}, b"x" * (MAX_PAYLOAD + 1))


def test_encode_refuses_json_over_the_limit() -> None:
    with pytest.raises(ProtocolError, match="message too large"):
        encode({"s": "x" * MAX_JSON})


def test_version_mismatch_names_both_versions() -> None:
    other = PROTOCOL_VERSION + 1
    frame = header(2, 0, magic=b"HPS" + bytes([other])) + b"{}"
    with pytest.raises(ProtocolError, match=f"protocol version {other} is not {PROTOCOL_VERSION}"):
        decode(frame)


def test_bad_magic() -> None:
    with pytest.raises(ProtocolError, match="bad magic"):
        decode(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    ("json_len", "payload_len", "match"),
    [
        (0, 0, "bad message length 0"),
        (MAX_JSON + 1, 0, "bad message length"),
        (0xFFFFFFFF, 0, "bad message length"),
        (2, MAX_PAYLOAD + 1, "bad payload length"),
        (2, 0xFFFFFFFF, "bad payload length"),
    ],
)
def test_header_with_bad_lengths_is_rejected_before_reading_the_body(
    json_len: int, payload_len: int, match: str
) -> None:
    # Only the 12 header bytes exist: the lengths must be refused from the header alone.
    with pytest.raises(ProtocolError, match=match):
        decode_header(header(json_len, payload_len))
    with pytest.raises(ProtocolError, match=match):
        decode(header(json_len, payload_len))


def test_truncated_header() -> None:
    frame = encode({"op": "x"})
    for cut in range(HEADER.size):
        with pytest.raises(ProtocolError, match="truncated header"):
            decode(frame[:cut])


def test_truncated_body_and_payload() -> None:
    frame = encode({"op": "x"}, b"payload")
    for cut in range(HEADER.size, len(frame)):
        with pytest.raises(ProtocolError, match="truncated frame"):
            decode(frame[:cut])


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"str"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"a":' + b"1" * 5000 + b"}", "not JSON"),
    ],
)
def test_body_that_is_not_a_json_object(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(header(len(body), 0) + body)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    # Within MAX_JSON, but deeper than the interpreter's recursion limit.
    body = b"[" * 200_000
    with pytest.raises(ProtocolError):
        decode(header(len(body), 0) + body)


def test_error_reply_and_socket_name() -> None:
    assert msgs.error(3, ErrorKind.AUTH, "denied") == {"t": "error", "re": 3, "kind": "auth", "msg": "denied"}
    assert proto.socket_name() == f"pool-v{PROTOCOL_VERSION}.sock"
    assert proto.socket_name(7) == "pool-v7.sock"


# -- over a real socket ----------------------------------------------------------------


def test_send_and_recv_frames_over_a_socketpair(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {"op": "exec", "cmd": "\u00e9"}, b"\x00\x01")
    send_frame(a, {"op": "eof"})
    assert recv_frame(b) == ({"op": "exec", "cmd": "\u00e9"}, b"\x00\x01")
    assert recv_frame(b) == ({"op": "eof"}, b"")


def test_recv_frame_reassembles_a_frame_sent_in_one_byte_pieces(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frame = encode({"k": "v"}, b"data")
    for i in range(len(frame)):
        a.sendall(frame[i : i + 1])
    assert recv_frame(b) == ({"k": "v"}, b"data")


def test_recv_frame_of_maximum_size_with_a_concurrent_writer(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256)
    writer = threading.Thread(target=send_frame, args=(a, {"op": "stdin"}, payload))
    writer.start()
    try:
        message, data = recv_frame(b)
    finally:
        writer.join(timeout=10)
    assert not writer.is_alive()
    assert message == {"op": "stdin"}
    assert data == payload


def test_peer_closed_before_a_frame(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(PeerClosed) as info:
        recv_frame(b)
    assert "middle" not in str(info.value)


@pytest.mark.parametrize("keep", [1, HEADER.size - 1, HEADER.size, HEADER.size + 3, -1])
def test_peer_closed_in_the_middle_of_a_frame(pair: Tuple[socket.socket, socket.socket], keep: int) -> None:
    a, b = pair
    frame = encode({"op": "exec"}, b"12345")
    a.sendall(frame[:keep])
    a.close()
    with pytest.raises(PeerClosed, match="in the middle of a frame"):
        recv_frame(b)


def test_peer_closed_is_a_protocol_error() -> None:
    assert issubclass(PeerClosed, ProtocolError)


def test_recv_frame_rejects_a_huge_header_without_waiting_for_the_body(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(header(0xFFFFFFFF, 0xFFFFFFFF))
    # Nothing else is sent: if recv_frame tried to read the body it would block (and time out).
    with pytest.raises(ProtocolError, match="bad message length"):
        recv_frame(b)


def test_recv_frame_garbage(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"\x00" * HEADER.size)
    with pytest.raises(ProtocolError, match="bad magic"):
        recv_frame(b)


# -- fuzzing ---------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_decode(data: bytes) -> None:
    try:
        (message, payload), rest = decode(data)
    except ProtocolError:
        return
    # Anything accepted is a well-formed frame, and re-encodes to the same bytes.
    assert isinstance(message, dict)
    assert isinstance(payload, bytes)
    assert len(payload) <= MAX_PAYLOAD
    consumed = len(data) - len(rest)
    assert data[consumed:] == rest
    json_len, payload_len = decode_header(data[: HEADER.size])
    assert consumed == HEADER.size + json_len + payload_len


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _check_decode(data)


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_bytes_after_a_valid_magic(data: bytes) -> None:
    _check_decode(MAGIC + data)


@FUZZ
@given(
    magic=st.sampled_from([MAGIC, b"HPS\x00", b"HPS\xff", b"\x00\x00\x00\x00"]),
    json_len=st.one_of(st.integers(0, 64), st.integers(0, 0xFFFFFFFF)),
    payload_len=st.one_of(st.integers(0, 64), st.integers(0, 0xFFFFFFFF)),
    body=st.binary(max_size=128),
)
def test_fuzz_headers_with_any_lengths(magic: bytes, json_len: int, payload_len: int, body: bytes) -> None:
    _check_decode(HEADER.pack(magic, json_len, payload_len) + body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    payload=st.binary(max_size=256),
    flip=st.integers(min_value=0),
)
def test_fuzz_round_trip_and_corruption(message: dict, payload: bytes, flip: int) -> None:
    frame = encode(message, payload)
    (decoded, data), rest = decode(frame)
    assert decoded == message
    assert data == payload
    assert rest == b""
    # Corrupt one byte: the result is a valid frame or a ProtocolError, never anything else.
    index = flip % len(frame)
    corrupted = frame[:index] + bytes([frame[index] ^ 0xA5]) + frame[index + 1 :]
    _check_decode(corrupted)


@FUZZ
@given(st.binary(min_size=1, max_size=256))
def test_fuzz_json_bodies(body: bytes) -> None:
    _check_decode(header(len(body), 0) + body)
