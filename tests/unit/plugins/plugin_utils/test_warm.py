"""Connection warming: the pool's reservation and the daemon's bounded warm queue (daemon/warm.py).

A fake connector and fake clock, as in test_pool.py; threads only where the behaviour is about
waiting, synchronised on observable state with bounded polling and joined with a timeout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import warm
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.warm import Warmer
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.core import Pool, PoolExhausted
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.entries import Reservation
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import OnExhausted, PoolKey, PoolSettings
from test_pool import (
    KEY,
    TIMEOUT,
    Env,
    FakeClock,
    FakeConnector,
    Worker,
    acquire,
    cfg,
    host_stats,
    wait_until,
    waiting,
)

OTHER = PoolKey("web2", 22, "deploy", "cred-a")


@pytest.fixture(name="env")
def env_fixture() -> Env:
    clock = FakeClock()
    connector = FakeConnector()
    return Env(Pool(connector, clock=clock), clock, connector)


def warm_open(env: Env, key: PoolKey = KEY) -> None:
    reservation = env.pool.reserve_warm(key, cfg())
    assert reservation is not None
    env.pool.open_reserved(reservation, cfg(), {"host": key.host})


# -- the pool's side --------------------------------------------------------------------------


def test_a_warmed_transport_serves_the_next_request_without_a_login(env: Env) -> None:
    warm_open(env)
    assert [e for e in env.pool.entries() if e.in_use == 0], "the warmed transport waits idle in the pool"
    assert host_stats(env)["poolMisses"] == 0, "a warm open is not a request's login until one takes it"
    lease = acquire(env)
    # The first request's login, made ahead: a miss, not a reuse; the next one reuses it.
    assert lease.hit is False and env.connector.connects == 1
    lease.release()
    second = acquire(env)
    assert second.hit is True and env.connector.connects == 1
    second.release()
    stats = host_stats(env)
    assert stats["poolMisses"] == 1 and stats["poolHits"] == 1, stats


@pytest.mark.parametrize("state", ["open", "handshake", "queued", "pool_full", "no_connections"])
def test_warming_takes_nothing_from_anyone(env: Env, state: str) -> None:
    """Never a second transport for a key, never ahead of a queued request, never past the cap."""
    settings = cfg()
    held = []
    if state == "open":
        warm_open(env)
    elif state == "handshake":
        assert env.pool.reserve_warm(KEY, settings) is not None
    elif state == "queued":
        settings = cfg(max_connections=1, max_channels=1)
        held.append(acquire(env, settings=settings))
        waiter = Worker(env, "queued", settings=settings)
        waiter.start()
        wait_until(lambda: waiting(env) == 1, "a queued request")
        held.append(waiter)
    elif state == "pool_full":
        env.pool.max_transports = 1
        warm_open(env, OTHER)
    else:
        settings = cfg(max_connections=0)
    connects = env.connector.connects
    try:
        assert env.pool.reserve_warm(KEY, settings) is None
        assert env.connector.connects == connects
        if state == "pool_full":
            assert len(env.pool.entries()) == 1, "warming never sheds another host's idle transport"
    finally:
        for item in held:
            if isinstance(item, Worker):
                held[0].release()
                assert item.got.wait(TIMEOUT)
                item.let_go.set()
                item.join(TIMEOUT)


def request_during_warm_handshake(env: Env, failures: List[BaseException], settings: PoolSettings) -> Worker:
    """A request (with ``settings``) that comes while a warm handshake, held at the connector's gate,
    is under way; both are done when this returns. The warm handshake's error, if any, goes to ``failures``."""
    env.connector.gate = threading.Event()
    reservation = env.pool.reserve_warm(KEY, cfg())
    assert reservation is not None

    def open_it() -> None:
        try:
            env.pool.open_reserved(reservation, cfg(), {"host": "web1"})
        except PoolError as e:
            failures.append(e)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    request = Worker(env, "request", settings=settings)
    request.start()
    try:
        wait_until(lambda: waiting(env) == 1, "the request queued behind the warm handshake")
    finally:
        env.connector.gate.set()
    assert request.got.wait(TIMEOUT)
    opener.join(TIMEOUT)
    return request


@pytest.mark.parametrize(
    "settings",
    [
        cfg(),
        cfg(max_channels=1),  # a warm handshake serves a request even when a transport takes one
        cfg(max_connections=1, on_exhausted=OnExhausted.FAIL),  # the warm login is its own: no "exhausted"
        cfg(max_connections=1, on_exhausted=OnExhausted.DIRECT),  # and no one-off second login
    ],
    ids=["default", "one_channel", "max1_fail", "max1_direct"],
)
def test_a_request_during_a_warm_handshake_waits_for_it(env: Env, settings: PoolSettings) -> None:
    failures: List[BaseException] = []
    request = request_during_warm_handshake(env, failures, settings)
    assert not failures and request.error is None, request.error
    assert request.lease is not None and request.lease.hit is False  # its login, made ahead
    assert env.connector.connects == 1, "one login for the warm open and the request"
    request.let_go.set()
    request.join(TIMEOUT)
    assert host_stats(env)["poolMisses"] == 1 and host_stats(env).get("directConnections", 0) == 0


def test_a_failed_warm_handshake_fails_the_request_waiting_for_it_once(env: Env) -> None:
    env.connector.error = PoolError("authentication failed", kind="auth")
    failures: List[BaseException] = []
    request = request_during_warm_handshake(env, failures, cfg())
    request.join(TIMEOUT)
    assert isinstance(request.error, PoolError) and "authentication failed" in str(request.error)
    assert len(failures) == 1
    assert env.connector.connects == 1, "the request made no attempt of its own"
    assert env.pool.is_empty()


def test_a_reservation_given_back_leaves_nothing_behind(env: Env) -> None:
    reservation = env.pool.reserve_warm(KEY, cfg())
    assert isinstance(reservation, Reservation)
    env.pool.cancel_reserved(reservation)
    env.pool.cancel_reserved(reservation)  # twice: nothing more
    assert env.pool.is_empty() and env.pool.transport_count() == 0
    assert acquire(env).hit is False and env.connector.connects == 1


def test_open_reserved_after_the_pool_closed_fails_as_a_shutdown(env: Env) -> None:
    reservation = env.pool.reserve_warm(KEY, cfg())
    assert reservation is not None
    env.pool.close_all()
    with pytest.raises(PoolError, match="shutting down"):
        env.pool.open_reserved(reservation, cfg(), {"host": "web1"})
    assert env.connector.connects == 0 and env.pool.is_empty()


# -- the daemon's warm queue ------------------------------------------------------------------


@dataclass
class FakeSpec:
    where: str
    proxy_jump: List[Any] = field(default_factory=list)


@dataclass
class FakeDaemon:
    pool: Pool


@dataclass
class FakeBinding:
    """What the warmer uses of a session's Binding: its key, settings, spec, daemon and open_warm."""

    key: PoolKey
    daemon: FakeDaemon
    settings: Any = field(default_factory=cfg)
    spec: FakeSpec = field(default_factory=lambda: FakeSpec("127.0.0.1:22"))

    def open_warm(self, reservation: Reservation) -> None:
        self.daemon.pool.open_reserved(reservation, self.settings, {"host": self.key.host})


def binding(env: Env, key: PoolKey = KEY) -> Any:
    return FakeBinding(key, FakeDaemon(env.pool))


def idle(warmer: Warmer) -> bool:
    return warmer._threads == 0  # pylint: disable=protected-access


def test_the_warmer_opens_in_the_background_and_counts(env: Env) -> None:
    warmer = Warmer()
    assert warmer.offer(binding(env)) is True
    wait_until(lambda: idle(warmer), "the warm handshake")
    assert warmer.counters.opened == 1 and env.connector.connects == 1
    assert warmer.offer(binding(env)) is False, "a key with a transport is left alone"
    assert warmer.counters.skipped == 1 and env.connector.connects == 1


def test_the_warmer_is_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "MAX_OPENING", 1)
    monkeypatch.setattr(warm, "MAX_QUEUED", 1)
    env.connector.gate = threading.Event()
    warmer = Warmer()
    third = PoolKey("web3", 22, "deploy", "cred-a")
    try:
        assert warmer.offer(binding(env)) is True  # handshaking
        assert warmer.offer(binding(env, OTHER)) is True  # queued
        assert warmer.offer(binding(env, OTHER)) is False  # already queued
        assert warmer.offer(binding(env, third)) is False  # the queue is full
        wait_until(lambda: env.connector.connects == 1, "the first warm handshake")
        assert env.connector.connects == 1, "one handshake at once"
    finally:
        env.connector.gate.set()
    wait_until(lambda: idle(warmer), "the warm queue to drain")
    assert warmer.counters.opened == 2 and warmer.counters.skipped == 2
    assert sorted(k.host for k in env.connector.calls) == ["web1", "web2"]


def test_a_key_whose_warm_login_failed_is_not_warmed_again_for_a_while(env: Env) -> None:
    clock = FakeClock()
    warmer = Warmer(clock=clock)
    env.connector.error = PoolError("authentication failed", kind="auth")
    for _task in range(3):  # three tasks without a connection on a host with a wrong password
        warmer.offer(binding(env))
        wait_until(lambda: idle(warmer), "the warm handshake")
    assert env.connector.connects == 1, "one login attempt, not one per task"
    assert warmer.counters.failed == 1 and warmer.counters.skipped == 2
    clock.advance(warm.FAILURE_KEPT + 1)
    assert warmer.offer(binding(env)) is True, "tried again once the failure is old"
    wait_until(lambda: idle(warmer), "the warm handshake")
    assert env.connector.connects == 2


def test_a_jump_host_target_is_not_warmed(env: Env) -> None:
    warmer = Warmer()
    jumping = FakeBinding(KEY, FakeDaemon(env.pool), spec=FakeSpec("10.0.0.5:22", proxy_jump=[{"host": "bastion"}]))
    assert warmer.offer(jumping) is False
    assert warmer.counters.skipped == 1 and env.connector.connects == 0 and env.pool.is_empty()


def test_no_thread_for_a_warm_handshake_gives_the_reservation_back(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(warm.threading.Thread, "start", refuse)
    warmer = Warmer()
    assert warmer.offer(binding(env)) is False
    assert idle(warmer) and env.pool.is_empty()
    monkeypatch.undo()
    assert acquire(env).hit is False and env.connector.connects == 1, "the key opens at once, nothing held"


def test_a_bug_in_a_warm_open_keeps_the_warmer_and_the_key_working(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "MAX_OPENING", 1)
    env.connector.gate = threading.Event()
    broken = binding(env)

    def bug(reservation: Reservation) -> None:
        raise ValueError("a bug")

    broken.open_warm = bug  # type: ignore[method-assign]
    warmer = Warmer()
    try:
        assert warmer.offer(binding(env, OTHER)) is True  # handshaking, at the gate
        assert warmer.offer(broken) is True  # queued behind it
        assert warmer.offer(binding(env, PoolKey("web3", 22, "deploy", "cred-a"))) is True
    finally:
        env.connector.gate.set()
    wait_until(lambda: idle(warmer), "the warm queue to drain")
    assert warmer.counters.opened == 2 and warmer.counters.failed == 1
    assert sorted(k.host for k in env.connector.calls) == ["web2", "web3"]
    assert acquire(env).hit is False, "the broken key's reservation was given back: it opens at once"


@pytest.mark.parametrize("mode", [OnExhausted.FAIL, OnExhausted.DIRECT])
def test_past_what_a_warm_handshake_carries_on_exhausted_applies(env: Env, mode: OnExhausted) -> None:
    """Max 1 transport of 1 channel: the first request waits for the warm login, the second is treated
    as without warming (fails at once, or gets its one-off transport)."""
    settings = cfg(max_connections=1, max_channels=1, on_exhausted=mode)
    env.connector.gate = threading.Event()
    reservation = env.pool.reserve_warm(KEY, settings)
    assert reservation is not None
    first = Worker(env, "first", settings=settings)
    first.start()
    try:
        wait_until(lambda: waiting(env) == 1, "the first request queued behind the warm handshake")
        second = Worker(env, "second", settings=settings)
        second.start()
        if mode is OnExhausted.FAIL:  # answered while the warm handshake is still held at the gate
            wait_until(second.got.is_set, "the second request to fail at once")
            assert isinstance(second.error, PoolExhausted), second.error
        else:
            wait_until(lambda: env.connector.connects == 1, "the second request's one-off login")
    finally:
        env.connector.gate.set()
    env.pool.open_reserved(reservation, settings, {"host": "web1"})
    assert first.got.wait(TIMEOUT) and first.error is None and first.lease is not None
    first.let_go.set()
    first.join(TIMEOUT)
    if mode is OnExhausted.FAIL:
        second.join(TIMEOUT)
    if mode is OnExhausted.DIRECT:
        assert second.got.wait(TIMEOUT) and second.error is None
        second.let_go.set()
        second.join(TIMEOUT)
        assert env.connector.connects == 2 and host_stats(env)["directConnections"] == 1


def test_a_key_queued_during_its_own_failing_warm_handshake_is_not_tried_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "MAX_OPENING", 1)
    env.connector.gate = threading.Event()
    env.connector.error = PoolError("connection timed out", kind="connect")
    warmer = Warmer()
    try:
        assert warmer.offer(binding(env)) is True  # handshaking, at the gate
        wait_until(lambda: env.connector.connects == 1, "the warm handshake")
        assert warmer.offer(binding(env)) is True  # a second task on the host: queued (threads full)
    finally:
        env.connector.gate.set()
    wait_until(lambda: idle(warmer), "the warm queue to drain")
    assert env.connector.connects == 1, "a host that failed is not knocked at again by the queued offer"
    assert warmer.counters.failed == 1 and warmer.counters.skipped == 1
