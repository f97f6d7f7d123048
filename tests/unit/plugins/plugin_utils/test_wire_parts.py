"""Replies that grow with the pool (``stats``, ``status``) fit the frame limit at any pool size.

The splitting and merging alone, then a real session over a socket pair answering a real
``PoolClient`` reader for 3,000 hosts and transports: well past the 256 KiB a frame may carry.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._client import PoolClient
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import PoolFailure
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames, parts
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import messages as msgs
from daemon_fakes import FakeDaemon, Worker
from fake_ssh import FakeServer

HOSTS = 3000


def host_counters(n: int) -> Dict[str, Dict[str, Any]]:
    return {
        f"host-{i:05d}.example.internal": {
            "poolHits": i,
            "poolMisses": 1,
            "waitSeconds": 0.25 * i,
            "totalConnections": 1,
        }
        for i in range(n)
    }


def transports(n: int) -> List[Dict[str, Any]]:
    return [
        {
            "id": i,
            "key": f"deploy@host-{i:05d}:22#{i:016x}",
            "host": f"host-{i:05d}",
            "port": 22,
            "user": "deploy",
            "age": 12.5,
            "idle": 3.25,
            "channels_in_use": 0,
            "max_channels": 10,
            "channels_opened": 2,
            "state": "idle",
        }
        for i in range(n)
    ]


def put_together(frames_: List[Dict[str, Any]]) -> Dict[str, Any]:
    whole = copy.deepcopy(frames_[0])
    for part in frames_[1:]:
        parts.merge(whole, part)
    return whole


def test_a_small_reply_is_one_frame_unchanged() -> None:
    message = msgs.reply(msgs.Reply.STATS, 3, msgs.StatsReply({"poolHits": 1}, host_counters(3)))
    assert parts.split(message, msgs.GROWING["stats"]) == [message]


@pytest.mark.parametrize("limit", [frames.MAX_JSON, 4096])
def test_stats_of_thousands_of_hosts_go_in_parts_that_each_fit_and_merge_back(limit: int) -> None:
    message = msgs.reply(msgs.Reply.STATS, 3, msgs.StatsReply({"poolHits": 7}, host_counters(HOSTS)))
    original = copy.deepcopy(message)
    out = parts.split(message, msgs.GROWING["stats"], limit)
    assert len(out) > 1
    for part in out:
        assert len(frames.encode(part)) - frames.HEADER.size <= limit
        assert part["re"] == 3 and part["t"] == "stats"
    assert [parts.more(p) for p in out] == [True] * (len(out) - 1) + [False]
    assert message == original  # the caller's reply is left alone
    assert put_together(out) == original


def test_status_splits_both_of_its_growing_collections() -> None:
    message = msgs.reply(
        msgs.Reply.STATUS,
        9,
        msgs.StatusReply(
            {"pid": 1, "clients": 2}, {"total": {"poolHits": 1}, "hosts": host_counters(HOSTS)}, transports(HOSTS)
        ),
    )
    original = copy.deepcopy(message)
    out = parts.split(message, msgs.GROWING["status"])
    assert len(out) > 2
    assert all(len(frames.encode(p)) <= frames.HEADER.size + frames.MAX_JSON for p in out)
    assert put_together(out) == original


def test_one_item_larger_than_a_frame_is_a_clear_error() -> None:
    message = msgs.reply(msgs.Reply.STATS, 3, msgs.StatsReply({}, {"x" * 5000: {}}))
    with pytest.raises(parts.TooLarge, match="one item of hosts"):
        parts.split(message, msgs.GROWING["stats"], 4096)


def test_a_part_that_adds_to_what_the_reply_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not have"):
        parts.merge({"t": "stats", "hosts": {}}, {"add": {"nothing.here": {}}})
    with pytest.raises(ValueError, match="adds a list"):
        parts.merge({"t": "stats", "hosts": {}}, {"add": {"hosts": []}})


# -- through a real session ---------------------------------------------------------------------


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    d = FakeDaemon(FakeServer())
    yield d
    d.pool.close_all()


def ask(daemon: FakeDaemon, op: str) -> Dict[str, Any]:
    worker = Worker(daemon)
    client = PoolClient("/nonexistent-pool-dir", spawn=False)
    try:
        worker.send({"op": op, "id": 5})
        reply = client._reply_to(worker.sock, 5)
        # The conversation goes on after the parts.
        worker.send({"op": "ping", "id": 6})
        assert client._reply_to(worker.sock, 6) == {"t": "pong"}
        return reply
    finally:
        worker.sock.close()
        worker.thread.join(10)


def test_stats_of_3000_hosts_reach_the_client_whole(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {"total": {"poolHits": 1}, "hosts": host_counters(HOSTS)}
    monkeypatch.setattr(daemon.pool, "stats", lambda: copy.deepcopy(big))
    assert ask(daemon, "stats") == {"t": "stats", **big}


def test_status_of_3000_transports_reaches_the_client_whole(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = {"total": {"poolHits": 1}, "hosts": host_counters(HOSTS)}
    monkeypatch.setattr(daemon.pool, "stats", lambda: copy.deepcopy(big))
    monkeypatch.setattr(daemon.pool, "snapshot", lambda: transports(HOSTS))
    reply = ask(daemon, "status")
    assert reply["stats"] == big and reply["transports"] == transports(HOSTS)
    assert reply["daemon"]["clients"] == 1


def test_a_reply_that_cannot_be_sent_is_an_error_and_the_session_goes_on(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon.pool, "stats", lambda: {"total": {}, "hosts": {"h" * frames.MAX_JSON: {}}})
    with pytest.raises(PoolFailure, match="stats reply is too large to send") as e:
        ask(daemon, "stats")
    assert e.value.kind.value == "too_large"


def test_a_request_too_large_for_a_frame_fails_clearly_before_a_byte_is_sent() -> None:
    client = PoolClient("/nonexistent-pool-dir", spawn=False)
    client.bind({"host": "web1", "addr": "127.0.0.9", "port": 2222, "user": "deploy"}, {})
    sent: List[bytes] = []

    class Sock:
        def sendall(self, data: bytes) -> None:
            sent.append(data)

    client._socket = Sock  # type: ignore[assignment,method-assign]
    client._bound = client._socket()  # type: ignore[assignment]
    client._ensure_bound = lambda sock: None  # type: ignore[method-assign]
    with pytest.raises(PoolFailure, match=r"^127\.0\.0\.9:2222: the exec request is too large") as e:
        client._send({"op": "exec", "cmd": "x" * (frames.MAX_JSON + 1)})
    assert e.value.kind.value == "too_large" and sent == []
