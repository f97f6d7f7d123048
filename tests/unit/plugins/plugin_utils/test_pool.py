"""The pool's bookkeeping, driven by a fake clock and a fake connector (no sockets, no Paramiko).

Threads are used only where the behaviour under test is about waiting (fair queues,
shared handshakes). They are synchronised on the pool's observable state with bounded
polling (``wait_until``), never on fixed sleeps, and always joined with a timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.core import Pool, PoolExhausted
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.entries import Lease
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import PoolKey, PoolSettings
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.stats import SERVICE_COUNTERS

TIMEOUT = 10.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll for a state another thread brings about; fail (not hang) if it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConn:
    def __init__(self, number: int) -> None:
        self.number = number
        self.active = True
        self.closes = 0
        self.closed = threading.Event()

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.closes += 1
        self.closed.set()

    def __repr__(self) -> str:
        return f"FakeConn({self.number})"


class FakeConnector:
    """Counts connects; can block every connect on a gate and fail with a given error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connects = 0
        self.conns: List[FakeConn] = []
        self.calls: List[PoolKey] = []
        self.specs: List[Dict[str, Any]] = []
        self.gate: Optional[threading.Event] = None
        self.error: Optional[BaseException] = None

    def connect(self, key: PoolKey, spec: Dict[str, Any]) -> FakeConn:
        with self.lock:
            self.connects += 1
            self.calls.append(key)
            self.specs.append(spec)
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT), "test never opened the connector's gate"
        if self.error is not None:
            raise self.error
        with self.lock:
            conn = FakeConn(len(self.conns) + 1)
            self.conns.append(conn)
        return conn


@dataclass
class Env:
    pool: Pool
    clock: FakeClock
    connector: FakeConnector
    events: List[tuple] = field(default_factory=list)


KEY = PoolKey("web1", 22, "deploy", "cred-a")


@pytest.fixture
def env() -> Env:
    clock = FakeClock()
    connector = FakeConnector()
    events: List[tuple] = []
    pool = Pool(connector, clock=clock, on_event=lambda name, **kw: events.append((name, kw)))
    return Env(pool, clock, connector, events)


def cfg(**overrides: Any) -> PoolSettings:
    base: Dict[str, Any] = {
        "max_connections": 5,
        "max_channels": 10,
        "idle_timeout": 60.0,
        "wait_timeout": 60.0,
        "health_checks": False,
    }
    base.update(overrides)
    return PoolSettings(**base)


def acquire(env: Env, key: PoolKey = KEY, settings: Optional[PoolSettings] = None) -> Lease:
    return env.pool.acquire(key, settings or cfg(), {"host": key.host})


def host_stats(env: Env, host: str = "web1") -> Dict[str, Any]:
    return env.pool.stats()["hosts"][host]


def waiting(env: Env) -> int:
    return int(env.pool.stats()["total"].get("waiting", 0))


class Worker(threading.Thread):
    """acquire() in a thread; records the lease or the error, and holds the lease until told."""

    def __init__(
        self,
        env: Env,
        name: str,
        key: PoolKey = KEY,
        settings: Optional[PoolSettings] = None,
        granted: Optional[List[str]] = None,
        hold: bool = True,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.env = env
        self.key = key
        self.settings = settings or cfg()
        self.granted = granted
        self.hold = hold
        self.lease: Optional[Lease] = None
        self.error: Optional[BaseException] = None
        self.got = threading.Event()
        self.let_go = threading.Event()

    def run(self) -> None:
        try:
            self.lease = self.env.pool.acquire(self.key, self.settings, {"host": self.key.host})
        except BaseException as e:
            self.error = e
            self.got.set()
            return
        if self.granted is not None:
            self.granted.append(self.name)
        self.got.set()
        if self.hold:
            assert self.let_go.wait(TIMEOUT), "test never released the worker"
        self.lease.release()


def join_all(workers: List[Worker], pool: Optional[Pool] = None) -> None:
    """Let every worker go and join it; after a failed test, shut the pool to free queued ones."""
    for w in workers:
        w.let_go.set()
    for w in workers:
        w.join(timeout=TIMEOUT if pool is None else 1.0)
    if pool is not None and any(w.is_alive() for w in workers):
        pool.close_all()
        for w in workers:
            w.join(timeout=TIMEOUT)
    assert not any(w.is_alive() for w in workers), "a worker thread did not finish"


# -- reuse and keys --------------------------------------------------------------------


def test_first_request_is_a_miss_then_hits_reuse_the_transport(env: Env) -> None:
    first = acquire(env)
    assert first.hit is False
    conn = first.conn
    first.release()
    for _round in range(3):
        lease = acquire(env)
        assert lease.hit is True
        assert lease.conn is conn
        lease.release()
    assert env.connector.connects == 1
    stats = host_stats(env)
    assert stats["poolMisses"] == 1
    assert stats["poolHits"] == 3
    assert env.connector.specs == [{"host": "web1"}]
    assert [name for name, _unused in env.events].count("created") == 1
    assert [name for name, _unused in env.events].count("reused") == 3


def test_release_is_idempotent(env: Env) -> None:
    lease = acquire(env)
    lease.release()
    lease.release()
    assert env.pool.snapshot()[0]["channels_in_use"] == 0
    again = acquire(env)
    assert again.hit is True
    assert env.pool.snapshot()[0]["channels_in_use"] == 1


@pytest.mark.parametrize(
    "other",
    [
        PoolKey("web1", 22, "root", "cred-a"),
        PoolKey("web1", 2222, "deploy", "cred-a"),
        PoolKey("web1", 22, "deploy", "cred-b"),
        PoolKey("web2", 22, "deploy", "cred-a"),
    ],
    ids=["user", "port", "cred", "host"],
)
def test_keys_that_differ_in_any_field_never_share_a_transport(env: Env, other: PoolKey) -> None:
    base = acquire(env, KEY)
    base.release()
    lease = acquire(env, other)
    assert lease.hit is False
    assert lease.conn is not base.conn
    assert env.connector.connects == 2
    assert env.connector.calls == [KEY, other]
    lease.release()
    # Each key still reuses its own transport.
    assert acquire(env, KEY).conn is base.conn
    assert acquire(env, other).conn is lease.conn
    assert env.connector.connects == 2


def test_key_label() -> None:
    assert KEY.label == "deploy@web1:22"


# -- limits ----------------------------------------------------------------------------


def test_max_channels_per_transport_then_a_second_transport(env: Env) -> None:
    settings = cfg(max_channels=10)
    leases = [acquire(env, settings=settings) for _round in range(10)]
    assert env.connector.connects == 1
    assert {id(lease.conn) for lease in leases} == {id(leases[0].conn)}
    assert [lease.hit for lease in leases] == [False] + [True] * 9
    eleventh = acquire(env, settings=settings)
    assert eleventh.hit is False
    assert eleventh.conn is not leases[0].conn
    assert env.connector.connects == 2
    snap = sorted(env.pool.snapshot(), key=lambda s: s["id"])
    assert [s["channels_in_use"] for s in snap] == [10, 1]
    stats = host_stats(env)
    assert (stats["activeConnections"], stats["idleConnections"], stats["totalConnections"]) == (2, 0, 2)
    assert stats["channelsInUse"] == 11


def test_requests_pack_the_busiest_transport_then_the_most_recently_used(env: Env) -> None:
    settings = cfg(max_channels=3)
    a1, a2 = acquire(env, settings=settings), acquire(env, settings=settings)
    a3 = acquire(env, settings=settings)
    env.clock.advance(1)
    b1 = acquire(env, settings=settings)  # A is full: B opens
    assert a1.conn is a2.conn is a3.conn and b1.conn is not a1.conn
    env.clock.advance(1)
    a3.release()
    env.clock.advance(1)
    b2 = acquire(env, settings=settings)
    # A: 2 in use, B: 1 in use -> the busiest (A) takes it, so idle transports can age out.
    assert b2.conn is a1.conn
    b2.release()
    a2.release()
    # A and B now both carry one lease; A was used last (a2's release) -> A.
    env.clock.advance(1)
    assert acquire(env, settings=settings).conn is a1.conn
    assert env.connector.connects == 2


def test_never_more_than_max_connections_and_exhaustion_message(env: Env) -> None:
    settings = cfg(max_connections=2, max_channels=1, wait_timeout=0)
    held = [acquire(env, settings=settings) for _round in range(2)]
    assert env.connector.connects == 2
    with pytest.raises(PoolExhausted) as info:
        acquire(env, settings=settings)
    assert str(info.value).startswith("Connection pool exhausted for web1:22 (max: 2)")
    assert info.value.kind == "exhausted"
    assert isinstance(info.value, PoolError)
    assert env.connector.connects == 2
    assert host_stats(env)["exhausted"] == 1
    assert host_stats(env)["peakConnections"] == 2
    assert waiting(env) == 0
    assert ("exhausted", {"key": KEY.label, "max": 2}) in env.events
    held[0].release()
    # Room again: served at once by the freed transport, no new connect.
    lease = acquire(env, settings=settings)
    assert lease.hit is True
    assert env.connector.connects == 2


def test_exhaustion_message_uses_the_inventory_host_and_port(env: Env) -> None:
    key = PoolKey("db.example.com", 2222, "u")
    settings = cfg(max_connections=1, max_channels=1, wait_timeout=0)
    acquire(env, key, settings)
    with pytest.raises(PoolExhausted, match=r"^Connection pool exhausted for db\.example\.com:2222 \(max: 1\)"):
        acquire(env, key, settings)


def test_waiters_are_served_first_come_first_served(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, wait_timeout=60)
    holder = acquire(env, settings=settings)
    granted: List[str] = []
    workers: List[Worker] = []
    try:
        for i in range(6):
            w = Worker(env, f"w{i}", settings=settings, granted=granted)
            workers.append(w)
            w.start()
            wait_until(lambda n=i + 1: waiting(env) == n, f"{i + 1} queued requests")
        assert granted == []
        holder.release()
        for i, w in enumerate(workers):
            assert w.got.wait(TIMEOUT)
            wait_until(lambda n=i + 1: len(granted) == n, f"grant {i + 1}")
            assert granted == [f"w{j}" for j in range(i + 1)]
            assert w.error is None and w.lease is not None
            assert w.lease.hit is True
            assert w.lease.conn is holder.conn
            w.let_go.set()
    finally:
        join_all(workers, env.pool)
    assert env.connector.connects == 1
    stats = host_stats(env)
    assert stats["waits"] == 6
    assert stats["poolHits"] == 6
    assert waiting(env) == 0


def test_queued_request_times_out_on_the_pool_clock(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, wait_timeout=30)
    holder = acquire(env, settings=settings)
    w = Worker(env, "late", settings=settings, hold=False)
    w.start()
    try:
        wait_until(lambda: waiting(env) == 1, "the request to queue")
        env.clock.advance(29.5)
        env.pool.sweep()  # wakes the waiters; not yet due
        assert not w.got.is_set(), "failed before its deadline"
        assert waiting(env) == 1
        env.clock.advance(1)
        env.pool.sweep()  # wakes the waiter, now past its deadline
        assert w.got.wait(TIMEOUT)
    finally:
        w.join(timeout=TIMEOUT)
    assert not w.is_alive()
    assert isinstance(w.error, PoolExhausted)
    assert str(w.error).startswith("Connection pool exhausted for web1:22 (max: 1)")
    assert waiting(env) == 0
    holder.release()


def test_waiter_queue_is_bounded(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, wait_timeout=60, max_waiters=2)
    holder = acquire(env, settings=settings)
    workers = [Worker(env, f"w{i}", settings=settings, hold=False) for i in range(2)]
    try:
        for i, w in enumerate(workers):
            w.start()
            wait_until(lambda n=i + 1: waiting(env) == n, f"{i + 1} queued")
        with pytest.raises(PoolExhausted, match=r"^Connection pool exhausted for web1:22 \(max: 1\)"):
            acquire(env, settings=settings)
        assert waiting(env) == 2
        holder.release()
        for w in workers:
            assert w.got.wait(TIMEOUT)
    finally:
        join_all(workers, env.pool)
    assert all(w.error is None for w in workers)
    assert env.connector.connects == 1


# -- handshakes ------------------------------------------------------------------------


def test_concurrent_first_requests_share_one_handshake(env: Env) -> None:
    env.connector.gate = threading.Event()
    settings = cfg(max_channels=10, max_connections=5)
    first = Worker(env, "first", settings=settings)
    first.start()
    others: List[Worker] = []
    try:
        wait_until(lambda: env.connector.connects == 1, "the first handshake to start")
        for i in range(4):
            w = Worker(env, f"w{i}", settings=settings)
            others.append(w)
            w.start()
        wait_until(lambda: waiting(env) == 4, "four requests queued behind the handshake")
        assert host_stats(env)["connecting"] == 1
        assert env.connector.connects == 1
        env.connector.gate.set()
        for w in [first, *others]:
            assert w.got.wait(TIMEOUT)
            assert w.error is None
        conns = {id(w.lease.conn) for w in [first, *others] if w.lease}
        assert len(conns) == 1
        assert env.connector.connects == 1
        assert first.lease is not None and first.lease.hit is False
        assert all(w.lease is not None and w.lease.hit for w in others)
        stats = host_stats(env)
        assert (stats["poolMisses"], stats["poolHits"], stats["channelsInUse"]) == (1, 4, 5)
    finally:
        env.connector.gate.set()
        join_all([first, *others], env.pool)


def test_a_handshake_in_flight_absorbs_only_what_it_can_carry(env: Env) -> None:
    # One handshake brings max_channels slots: the request beyond them opens a second one.
    env.connector.gate = threading.Event()
    settings = cfg(max_channels=3, max_connections=5)
    workers = [Worker(env, "first", settings=settings)]
    try:
        workers[0].start()
        wait_until(lambda: env.connector.connects == 1, "the first handshake")
        for i in range(2):
            w = Worker(env, f"w{i}", settings=settings)
            workers.append(w)
            w.start()
            wait_until(lambda n=i + 1: waiting(env) == n, f"{i + 1} queued")
        extra = Worker(env, "extra", settings=settings)
        workers.append(extra)
        extra.start()
        wait_until(lambda: env.connector.connects == 2, "a second handshake for the fourth request")
        assert waiting(env) == 2
        env.connector.gate.set()
        for w in workers:
            assert w.got.wait(TIMEOUT)
            assert w.error is None
    finally:
        env.connector.gate.set()
        join_all(workers, env.pool)
    assert env.connector.connects == 2
    assert host_stats(env)["poolMisses"] == 2
    assert host_stats(env)["poolHits"] == 2


def test_a_burst_pays_one_handshake_per_max_channels_requests(env: Env) -> None:
    # 20 concurrent first requests, 10 channels per transport: exactly two handshakes.
    env.connector.gate = threading.Event()
    settings = cfg(max_channels=10, max_connections=5)
    workers: List[Worker] = []
    try:
        for i in range(20):
            w = Worker(env, f"w{i}", settings=settings)
            workers.append(w)
            w.start()
            wait_until(lambda n=i + 1: waiting(env) + env.connector.connects == n, f"request {i + 1} placed")
        assert env.connector.connects == 2
        assert waiting(env) == 18
        env.connector.gate.set()
        for w in workers:
            assert w.got.wait(TIMEOUT)
            assert w.error is None
        assert env.connector.connects == 2
        assert sorted(s["channels_in_use"] for s in env.pool.snapshot()) == [10, 10]
    finally:
        env.connector.gate.set()
        join_all(workers, env.pool)
    stats = host_stats(env)
    assert (stats["poolMisses"], stats["poolHits"]) == (2, 18)


def test_connect_failure_reaches_every_request_queued_behind_it(env: Env) -> None:
    env.connector.gate = threading.Event()
    env.connector.error = PoolError("authentication failed for deploy@web1", kind="auth")
    first = Worker(env, "first")
    first.start()
    others: List[Worker] = []
    try:
        wait_until(lambda: env.connector.connects == 1, "the handshake")
        for i in range(5):
            w = Worker(env, f"w{i}")
            others.append(w)
            w.start()
        wait_until(lambda: waiting(env) == 5, "five queued requests")
        env.connector.gate.set()
        for w in [first, *others]:
            assert w.got.wait(TIMEOUT)
    finally:
        env.connector.gate.set()
        join_all([first, *others], env.pool)
    assert env.connector.connects == 1, "a failed handshake must not be retried by each waiter"
    for w in [first, *others]:
        assert isinstance(w.error, PoolError)
        assert w.error.kind == "auth"
        assert "authentication failed" in str(w.error)
    stats = host_stats(env)
    assert stats["connectFailures"] == 1
    assert stats["poolMisses"] == 0
    assert env.pool.is_empty()


def test_connect_failure_of_a_single_request(env: Env) -> None:
    env.connector.error = PoolError("connection refused", kind="connect")
    with pytest.raises(PoolError, match="connection refused"):
        acquire(env)
    assert env.pool.is_empty()
    assert host_stats(env)["connectFailures"] == 1
    env.connector.error = None
    assert acquire(env).hit is False
    assert env.connector.connects == 2


# -- refused channels, broken and dead transports -------------------------------------


def test_refused_channel_teaches_the_transport_and_the_key_the_server_limit(env: Env) -> None:
    settings = cfg(max_channels=10)
    held = [acquire(env, settings=settings) for _round in range(4)]
    refused = acquire(env, settings=settings)
    assert refused.conn is held[0].conn
    refused.release(refused=True)
    snap = env.pool.snapshot()
    assert len(snap) == 1
    assert snap[0]["max_channels"] == 4
    assert snap[0]["channels_in_use"] == 4
    assert snap[0]["state"] == "active"
    assert host_stats(env)["channelsRefused"] == 1
    # The fifth request now opens a second transport, which starts with the learned limit.
    fifth = acquire(env, settings=settings)
    assert fifth.hit is False and fifth.conn is not held[0].conn
    new = next(s for s in env.pool.snapshot() if s["id"] == fifth.entry.id)
    assert new["max_channels"] == 4
    assert fifth.entry.max_channels == 4
    # The first transport keeps working within its limit.
    held[0].release()
    again = acquire(env, settings=settings)
    assert again.conn is held[1].conn  # 3 of 4 in use there: the busiest transport with room
    assert env.connector.connects == 2


def test_refused_first_channel_means_the_transport_is_broken(env: Env) -> None:
    lease = acquire(env)
    conn = lease.conn
    lease.release(refused=True)
    assert conn.closes == 1
    assert env.pool.snapshot() == []
    assert host_stats(env)["closedDead"] == 1
    assert acquire(env).conn is not conn


def test_broken_release_drops_the_transport(env: Env) -> None:
    lease = acquire(env)
    conn = lease.conn
    lease.release(broken=True)
    assert conn.closes == 1
    assert env.pool.snapshot() == []
    assert host_stats(env)["closedDead"] == 1
    nxt = acquire(env)
    assert nxt.hit is False and nxt.conn is not conn
    assert env.connector.connects == 2


def test_broken_transport_with_other_leases_closes_when_the_last_one_is_released(env: Env) -> None:
    a, b = acquire(env), acquire(env)
    conn = a.conn
    a.release(broken=True)
    assert conn.closes == 0
    assert env.pool.snapshot()[0]["state"] == "dead"
    c = acquire(env)
    assert c.conn is not conn, "a dead transport must not take new channels"
    b.release()
    assert conn.closes == 1
    assert [s["id"] for s in env.pool.snapshot()] == [c.entry.id]


def test_dead_transport_is_not_reused_and_is_closed(env: Env) -> None:
    lease = acquire(env)
    conn = lease.conn
    lease.release()
    conn.active = False
    nxt = acquire(env)
    assert nxt.hit is False
    assert nxt.conn is not conn
    assert conn.closed.wait(TIMEOUT), "the dead transport was never closed"
    assert conn.closes == 1
    assert host_stats(env)["closedDead"] == 1
    assert [s["id"] for s in env.pool.snapshot()] == [nxt.entry.id]


def test_mark_dead_closes_an_idle_transport(env: Env) -> None:
    lease = acquire(env)
    lease.release()
    env.pool.mark_dead(lease.entry)
    assert lease.conn.closed.wait(TIMEOUT)
    assert env.pool.snapshot() == []
    assert env.pool.is_empty()


def test_a_close_that_raises_is_ignored(env: Env) -> None:
    lease = acquire(env)

    def boom() -> None:
        raise OSError("socket already gone")

    lease.conn.close = boom
    lease.release(broken=True)
    assert env.pool.snapshot() == []


# -- idle timeout and health checks ----------------------------------------------------


def test_idle_transport_is_closed_by_sweep_after_idle_timeout(env: Env) -> None:
    settings = cfg(idle_timeout=60)
    lease = acquire(env, settings=settings)
    conn = lease.conn
    env.clock.advance(500)  # busy transports are never idle-closed
    assert env.pool.sweep() == ([], [])
    lease.release()
    stats = host_stats(env)
    assert (stats["idleConnections"], stats["activeConnections"], stats["totalConnections"]) == (1, 0, 1)
    env.clock.advance(59)
    assert env.pool.sweep() == ([], [])
    assert conn.closes == 0
    env.clock.advance(1)
    closed, due = env.pool.sweep()
    assert [e.conn for e in closed] == [conn]
    assert due == []
    assert conn.closes == 1
    stats = host_stats(env)
    assert stats["closedIdle"] == 1
    assert (stats["idleConnections"], stats["totalConnections"]) == (0, 0)
    assert env.pool.is_empty()
    assert ("closed_idle", {"count": 1}) in env.events


def test_use_resets_the_idle_clock(env: Env) -> None:
    settings = cfg(idle_timeout=60)
    acquire(env, settings=settings).release()
    env.clock.advance(50)
    acquire(env, settings=settings).release()
    env.clock.advance(50)
    assert env.pool.sweep() == ([], [])
    env.clock.advance(10)
    closed, _unused = env.pool.sweep()
    assert len(closed) == 1


def test_sweep_closes_an_idle_transport_that_died(env: Env) -> None:
    lease = acquire(env)
    lease.release()
    lease.conn.active = False
    closed, due = env.pool.sweep()
    assert due == []
    assert [e.id for e in closed] == [lease.entry.id]
    assert lease.conn.closes == 1
    assert host_stats(env)["closedDead"] == 1
    assert host_stats(env)["closedIdle"] == 0


def test_health_checks_come_due_at_the_interval(env: Env) -> None:
    settings = cfg(idle_timeout=600, health_checks=True, health_check_interval=30)
    lease = acquire(env, settings=settings)
    lease.release()
    env.clock.advance(29)
    assert env.pool.sweep() == ([], [])
    env.clock.advance(1)
    closed, due = env.pool.sweep()
    assert closed == []
    assert [e.id for e in due] == [lease.entry.id]
    # Handed out once: not due again while its check runs.
    assert env.pool.sweep() == ([], [])
    env.pool.report_health(due[0], True)
    stats = host_stats(env)
    assert (stats["healthChecksPassed"], stats["healthCheckFailures"]) == (1, 0)
    assert lease.conn.closes == 0
    # The interval counts from the last check.
    env.clock.advance(29)
    assert env.pool.sweep() == ([], [])
    env.clock.advance(1)
    _unused, due = env.pool.sweep()
    assert [e.id for e in due] == [lease.entry.id]
    env.pool.report_health(due[0], False)
    stats = host_stats(env)
    assert (stats["healthChecksPassed"], stats["healthCheckFailures"]) == (1, 1)
    assert lease.conn.closes == 1
    assert env.pool.snapshot() == []
    assert stats["totalConnections"] == 0
    nxt = acquire(env, settings=settings)
    assert nxt.hit is False
    assert env.connector.connects == 2


def test_no_health_checks_when_disabled(env: Env) -> None:
    settings = cfg(idle_timeout=600, health_checks=False, health_check_interval=30)
    acquire(env, settings=settings).release()
    env.clock.advance(300)
    assert env.pool.sweep() == ([], [])


def test_busy_transports_are_not_health_checked(env: Env) -> None:
    settings = cfg(idle_timeout=600, health_checks=True, health_check_interval=30)
    lease = acquire(env, settings=settings)
    env.clock.advance(100)
    assert env.pool.sweep() == ([], [])
    lease.release()


def test_failed_health_check_of_a_transport_taken_meanwhile_closes_it_on_release(env: Env) -> None:
    settings = cfg(idle_timeout=600, health_checks=True, health_check_interval=30)
    acquire(env, settings=settings).release()
    env.clock.advance(30)
    _unused, due = env.pool.sweep()
    lease = acquire(env, settings=settings)
    assert lease.entry is due[0]
    env.pool.report_health(due[0], False)
    assert lease.conn.closes == 0
    lease.release()
    assert lease.conn.closes == 1
    assert env.pool.snapshot() == []


# -- eviction, shutdown, recycling -----------------------------------------------------


def test_evict_closes_idle_transports_now_and_busy_ones_on_release(env: Env) -> None:
    settings = cfg(max_channels=1)
    key_b = PoolKey("web2", 22, "deploy")
    busy = acquire(env, settings=settings)
    idle = acquire(env, settings=settings)
    idle.release()
    other = acquire(env, key_b, settings)
    other.release()
    count = env.pool.evict(lambda k: k.host == "web1")
    assert count == 2
    assert idle.conn.closes == 1
    assert busy.conn.closes == 0
    assert other.conn.closes == 0
    states = {s["id"]: s["state"] for s in env.pool.snapshot()}
    assert states == {busy.entry.id: "retiring", other.entry.id: "idle"}
    nxt = acquire(env, settings=settings)
    assert nxt.hit is False and nxt.conn not in (busy.conn, idle.conn)
    busy.release()
    assert busy.conn.closes == 1
    assert host_stats(env)["evicted"] == 2
    assert host_stats(env, "web2")["evicted"] == 0
    assert acquire(env, key_b, settings).conn is other.conn


def test_evict_with_no_match(env: Env) -> None:
    lease = acquire(env)
    lease.release()
    assert env.pool.evict(lambda k: False) == 0
    assert lease.conn.closes == 0
    assert acquire(env).hit is True


def test_close_all_fails_queued_requests_and_closes_everything(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, wait_timeout=60)
    holder = acquire(env, settings=settings)
    other = acquire(env, PoolKey("web2", 22, "u"), settings)
    other.release()
    workers = [Worker(env, f"w{i}", settings=settings, hold=False) for i in range(3)]
    try:
        for i, w in enumerate(workers):
            w.start()
            wait_until(lambda n=i + 1: waiting(env) == n, f"{i + 1} queued")
        assert env.pool.close_all() == 2
        for w in workers:
            assert w.got.wait(TIMEOUT)
    finally:
        join_all(workers, env.pool)
    for w in workers:
        assert isinstance(w.error, PoolError)
        assert w.error.kind == "shutdown"
    assert holder.conn.closes == 1
    assert other.conn.closes == 1
    assert env.pool.is_empty()
    holder.release()  # a lease that outlives the pool's contents is released quietly
    assert env.pool.is_empty()


def test_close_all_during_a_handshake_leaves_no_orphan_transport(env: Env) -> None:
    env.connector.gate = threading.Event()
    w = Worker(env, "connecting", hold=False)
    w.start()
    try:
        wait_until(lambda: env.connector.connects == 1, "the handshake")
        assert env.pool.close_all() == 0
        env.connector.gate.set()
        assert w.got.wait(TIMEOUT)
    finally:
        env.connector.gate.set()
        join_all([w], env.pool)
    # The transport that finished its handshake after shutdown must be closed, not handed out.
    (conn,) = env.connector.conns
    assert conn.closes == 1
    assert isinstance(w.error, PoolError) and w.error.kind == "shutdown"
    assert env.pool.is_empty()
    assert env.pool.snapshot() == []


def test_transport_is_recycled_after_max_transport_channels(env: Env) -> None:
    settings = cfg(max_transport_channels=3)
    leases = []
    for _round in range(3):
        lease = acquire(env, settings=settings)
        leases.append(lease)
        lease.release()
    assert {id(lease.conn) for lease in leases} == {id(leases[0].conn)}
    assert leases[0].conn.closes == 1, "the transport that carried its last channel is closed on release"
    nxt = acquire(env, settings=settings)
    assert nxt.hit is False
    assert nxt.conn is not leases[0].conn
    assert env.connector.connects == 2


def test_retiring_transport_finishes_its_running_channels(env: Env) -> None:
    settings = cfg(max_transport_channels=2)
    a = acquire(env, settings=settings)
    b = acquire(env, settings=settings)  # the second channel: retire after it
    assert b.conn is a.conn
    c = acquire(env, settings=settings)
    assert c.conn is not a.conn
    a.release()
    assert a.conn.closes == 0
    b.release()
    assert a.conn.closes == 1


# -- statistics ------------------------------------------------------------------------


def test_stats_have_the_origin_counters_when_empty(env: Env) -> None:
    stats = env.pool.stats()
    assert stats["hosts"] == {}
    for name in SERVICE_COUNTERS:
        assert stats["total"][name] == 0


def test_stats_overall_and_per_host(env: Env) -> None:
    settings = cfg(max_channels=1, idle_timeout=600, health_checks=True, health_check_interval=30)
    web1_user = PoolKey("web1", 22, "u1")
    web1_other = PoolKey("web1", 22, "u2")
    web2 = PoolKey("web2", 2222, "u1")
    busy = acquire(env, web1_user, settings)  # miss
    idle = acquire(env, web1_user, settings)  # miss (max_channels=1)
    idle.release()
    acquire(env, web1_user, settings).release()  # hit
    other = acquire(env, web1_other, settings)  # miss
    other.release()
    w2 = acquire(env, web2, settings)  # miss
    w2.release()
    acquire(env, web2, settings).release()  # hit
    acquire(env, web2, settings).release()  # hit
    env.clock.advance(30)
    _unused, due = env.pool.sweep()
    assert len(due) == 3  # the idle ones: web1/u1 (second), web1/u2, web2
    for entry in due:
        env.pool.report_health(entry, entry.key.host != "web2")
    stats = env.pool.stats()
    web1 = stats["hosts"]["web1"]
    assert {name: web1[name] for name in SERVICE_COUNTERS} == {
        "poolHits": 1,
        "poolMisses": 3,
        "activeConnections": 1,
        "idleConnections": 2,
        "totalConnections": 3,
        "healthCheckFailures": 0,
        "healthChecksPassed": 2,
    }
    host2 = stats["hosts"]["web2"]
    assert {name: host2[name] for name in SERVICE_COUNTERS} == {
        "poolHits": 2,
        "poolMisses": 1,
        "activeConnections": 0,
        "idleConnections": 0,
        "totalConnections": 0,
        "healthCheckFailures": 1,
        "healthChecksPassed": 0,
    }
    total = stats["total"]
    assert {name: total[name] for name in SERVICE_COUNTERS} == {
        "poolHits": 3,
        "poolMisses": 4,
        "activeConnections": 1,
        "idleConnections": 2,
        "totalConnections": 3,
        "healthCheckFailures": 1,
        "healthChecksPassed": 2,
    }
    assert total["channelsInUse"] == 1
    busy.release()
    assert env.pool.stats()["total"]["activeConnections"] == 0
    assert env.pool.stats()["total"]["idleConnections"] == 3


def test_snapshot_describes_live_transports(env: Env) -> None:
    lease = acquire(env)
    env.clock.advance(5)
    lease.release()
    env.clock.advance(2)
    (snap,) = env.pool.snapshot()
    assert snap["key"] == "deploy@web1:22"
    assert (snap["host"], snap["port"], snap["user"]) == ("web1", 22, "deploy")
    assert snap["age"] == 7.0
    assert snap["idle"] == 2.0
    assert snap["state"] == "idle"
    assert snap["channels_opened"] == 1


def test_settings_from_dict_ignores_unknown_and_none() -> None:
    s = PoolSettings.from_dict({"max_connections": 7, "idle_timeout": None, "bogus": 1})
    assert s.max_connections == 7
    assert s.idle_timeout == 60.0


# -- each request's own settings --------------------------------------------------------------


def test_a_request_opens_a_transport_only_below_its_own_max_connections(env: Env) -> None:
    """Two playbooks share the daemon with different limits: neither overwrites the other's."""
    wide = cfg(max_connections=3, max_channels=1, wait_timeout=0)
    narrow = cfg(max_connections=1, max_channels=1, wait_timeout=0)
    held = [acquire(env, settings=wide), acquire(env, settings=wide)]
    assert env.connector.connects == 2
    # The narrow request may not open a third transport: two exist, its limit is one.
    with pytest.raises(PoolExhausted, match=r"\(max: 1\)"):
        acquire(env, settings=narrow)
    # The wide one still may (the narrow request did not lower the key's limit).
    held.append(acquire(env, settings=wide))
    assert env.connector.connects == 3
    for lease in held:
        lease.release()


def test_a_waiter_waits_its_own_wait_timeout(env: Env) -> None:
    patient = cfg(max_connections=1, max_channels=1, wait_timeout=60)
    hasty = cfg(max_connections=1, max_channels=1, wait_timeout=0)
    holder = acquire(env, settings=patient)
    waiter = Worker(env, "patient", settings=patient, hold=False)
    waiter.start()
    wait_until(lambda: waiting(env) == 1, "the patient request to queue")
    # A later request with no patience fails at once; the patient one keeps waiting.
    with pytest.raises(PoolExhausted, match="waited 0s"):
        acquire(env, settings=hasty)
    assert waiter.is_alive()
    holder.release()
    waiter.join(TIMEOUT)
    assert waiter.lease is not None and waiter.error is None


def test_an_idle_transport_follows_the_settings_of_its_last_user(env: Env) -> None:
    short = cfg(idle_timeout=5)
    acquire(env, settings=cfg(idle_timeout=600)).release()
    acquire(env, settings=short).release()
    env.clock.advance(6)
    closed, _unused = env.pool.sweep()
    assert len(closed) == 1


def test_a_queued_request_is_never_granted_a_transport_beyond_its_own_limit(env: Env) -> None:
    """With one key's settings shared (last writer wins), a later request with a higher limit made
    the pool open a second transport for a queued request whose own limit is one."""
    wide = cfg(max_connections=2, max_channels=1, wait_timeout=60)
    narrow = cfg(max_connections=1, max_channels=1, wait_timeout=60)
    first = acquire(env, settings=wide)
    n = Worker(env, "narrow", settings=narrow, hold=False)
    n.start()
    wait_until(lambda: waiting(env) == 1, "the narrow request to queue")
    w = Worker(env, "wide", settings=wide)
    w.start()
    wait_until(lambda: waiting(env) == 2, "the wide request to queue behind it")
    assert env.connector.connects == 1  # nobody opened a second transport for the narrow request
    first.release()
    assert n.got.wait(TIMEOUT) and n.error is None and n.lease is not None
    assert n.lease.conn.number == 1
    assert w.got.wait(TIMEOUT) and w.error is None and w.lease is not None
    w.let_go.set()
    n.join(TIMEOUT)
    w.join(TIMEOUT)
