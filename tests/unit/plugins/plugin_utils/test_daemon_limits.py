"""The daemon's guards against busy servers and malformed requests, without sockets or sshd."""

from __future__ import annotations

import threading
import time

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import PoolSettings
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.limiter import HandshakeLimiter
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.messages import Op, check_request

ADDRESS = ("127.0.0.2", 2222)


def test_a_drop_shrinks_the_cap_and_pauses_every_handshake_to_that_address() -> None:
    limiter = HandshakeLimiter()
    deadline = time.monotonic() + 10
    limiter.acquire(ADDRESS, 3, deadline)
    limiter.acquire(ADDRESS, 3, deadline)
    limiter.release(ADDRESS, dropped=True, backoff=0.3)
    assert limiter.limit(ADDRESS) == 1
    # One handshake is still under way and the address is paused: nobody gets in...
    with pytest.raises(PoolError, match="timed out waiting for a handshake slot"):
        limiter.acquire(ADDRESS, 3, time.monotonic() + 0.05)
    limiter.release(ADDRESS, dropped=False)
    # ...until the pause is over; another address is not paused at all.
    limiter.acquire(("127.0.0.3", 2222), 3, time.monotonic() + 0.05)
    started = time.monotonic()
    limiter.acquire(ADDRESS, 3, time.monotonic() + 10)
    assert time.monotonic() - started > 0.1


def test_waiters_are_woken_when_a_slot_frees() -> None:
    limiter = HandshakeLimiter()
    limiter.acquire(ADDRESS, 1, time.monotonic() + 10)
    got = threading.Event()

    def wait() -> None:
        limiter.acquire(ADDRESS, 1, time.monotonic() + 10)
        got.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert not got.wait(0.05)
    limiter.release(ADDRESS, dropped=False)
    assert got.wait(10)
    thread.join(10)


def test_a_dropped_request_keeps_its_place_in_line() -> None:
    """Slots go in ticket order, and a retry that passes its first ticket back goes before
    everyone who came after it, however the threads are woken."""
    limiter = HandshakeLimiter()
    first = limiter.acquire(ADDRESS, 1, time.monotonic() + 10)
    order: list = []
    lock = threading.Lock()

    def wait(name: str) -> None:
        limiter.acquire(ADDRESS, 1, time.monotonic() + 10)
        with lock:
            order.append(name)
        limiter.release(ADDRESS, dropped=False)

    threads = []
    for name in ("second", "third"):
        thread = threading.Thread(target=wait, args=(name,))
        thread.start()
        threads.append(thread)
        # Tickets are taken under the limiter's lock, which notifies: wait until this one is in line.
        with limiter._cond:
            assert limiter._cond.wait_for(lambda: len(limiter._waiting.get(ADDRESS, [])) == len(threads), 10)
    limiter.release(ADDRESS, dropped=True, backoff=0.05)
    # The dropped request asks again with its ticket: it goes before "second" and "third".
    assert limiter.acquire(ADDRESS, 1, time.monotonic() + 10, first) == first
    with lock:
        assert order == []
    limiter.release(ADDRESS, dropped=False)
    for thread in threads:
        thread.join(10)
    assert order == ["second", "third"]


@pytest.mark.parametrize(
    "data",
    [
        {"max_connections": "5"},
        {"max_connections": 0},
        {"max_connections": 2.5},
        {"max_connections": True},
        {"idle_timeout": "60"},
        {"idle_timeout": -1},
        {"idle_timeout": float("nan")},
        {"health_checks": 1},
        {"keepalive_max_missed": []},
    ],
)
def test_pool_settings_of_the_wrong_type_or_range_are_refused(data: dict) -> None:
    with pytest.raises(ValueError, match="pool setting"):
        PoolSettings.from_dict(data)


def test_pool_settings_accept_what_the_plugin_sends() -> None:
    s = PoolSettings.from_dict(
        {
            "max_connections": 2,
            "max_channels": 4.0,
            "idle_timeout": 0.5,
            "wait_timeout": 0,
            "health_checks": False,
            "keepalive_interval": 0,
            "keepalive_max_missed": 2,
        }
    )
    assert (s.max_connections, s.max_channels, s.idle_timeout, s.health_checks) == (2, 4, 0.5, False)
    assert isinstance(s.max_channels, int)


GOOD = {"host": "h", "addr": "127.0.0.1", "port": 22, "user": "u", "timeout": 10.0, "password": None}


@pytest.mark.parametrize(
    ("op", "msg", "problem"),
    [
        (Op.BIND, {}, "conn must be an object"),
        (Op.BIND, {"conn": {"host": "h"}}, "conn.addr is missing"),
        (Op.BIND, {"conn": dict(GOOD, port="22")}, "conn.port must be a port number"),
        (Op.BIND, {"conn": dict(GOOD, port=70000)}, "conn.port must be a port number"),
        (Op.BIND, {"conn": dict(GOOD, addr=["x"])}, "conn.addr has the wrong type"),
        (Op.BIND, {"conn": dict(GOOD, timeout=True)}, "conn.timeout has the wrong type"),
        (Op.BIND, {"conn": dict(GOOD, timeout=1e12)}, "conn.timeout is out of range"),
        (Op.BIND, {"conn": dict(GOOD, known_hosts_files=[5])}, "conn.known_hosts_files[0] has the wrong type"),
        (Op.BIND, {"conn": dict(GOOD, known_hosts_files=[["a"]])}, "conn.known_hosts_files[0] has the wrong type"),
        (Op.BIND, {"conn": dict(GOOD, known_hosts_files=["a\0b"])}, "conn.known_hosts_files[0] contains a NUL byte"),
        (Op.BIND, {"conn": dict(GOOD, proxy_jump=[{"host": "b"}])}, "conn.proxy_jump[0].addr is missing"),
        (Op.EXEC, {"cmd": ["true"]}, "cmd must be a string"),
        (Op.BIND, {"conn": GOOD, "pool": []}, "pool must be an object"),
        (Op.PUT, {"local": "a", "remote": 3}, "remote must be a string"),
    ],
)
def test_malformed_requests_are_named(op: Op, msg: dict, problem: str) -> None:
    assert check_request(op, msg) == problem


def test_well_formed_requests_pass() -> None:
    assert check_request(Op.BIND, {"conn": GOOD, "pool": {}}) is None
    assert check_request(Op.EXEC, {"cmd": "true"}) is None
    assert check_request(Op.FETCH, {"local": "a", "remote": "b"}) is None
    assert check_request(Op.STATS, {"anything": object()}) is None
