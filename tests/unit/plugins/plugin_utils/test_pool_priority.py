"""The pool's request priority, its on_exhausted choices and the idle sweep's interval (fake clock and connector)."""

from __future__ import annotations

from typing import List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.core import Pool, PoolExhausted
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import OnExhausted, PoolSettings, Priority
from test_pool import Env, FakeClock, FakeConnector, Worker, acquire, cfg, host_stats, join_all, wait_until, waiting


@pytest.fixture
def env() -> Env:
    clock, connector = FakeClock(), FakeConnector()
    return Env(Pool(connector, clock=clock), clock, connector)


def test_a_high_priority_waiter_is_served_before_earlier_low_priority_ones(env: Env) -> None:
    low = cfg(max_connections=1, max_channels=1, priority=Priority.LOW)
    high = cfg(max_connections=1, max_channels=1, priority=Priority.HIGH)
    normal = cfg(max_connections=1, max_channels=1)
    holder = acquire(env, settings=low)
    granted: List[str] = []
    workers: List[Worker] = []
    try:
        for name, settings in (("low1", low), ("low2", low), ("normal", normal), ("high", high), ("low3", low)):
            w = Worker(env, name, settings=settings, granted=granted)
            workers.append(w)
            w.start()
            queued = len(workers)
            wait_until(lambda n=queued: waiting(env) == n, f"{queued} queued requests")
        holder.release()
        order = ["high", "normal", "low1", "low2", "low3"]
        by_name = {w.name: w for w in workers}
        for i, name in enumerate(order):
            wait_until(lambda n=i + 1: len(granted) == n, f"grant {i + 1}")
            assert granted == order[: i + 1]
            by_name[name].let_go.set()
    finally:
        join_all(workers, env.pool)
    assert env.connector.connects == 1


def test_on_exhausted_fail_reports_at_once(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, on_exhausted=OnExhausted.FAIL, wait_timeout=60)
    holder = acquire(env, settings=settings)
    with pytest.raises(PoolExhausted, match=r"web1:22 \(max: 1\); on_exhausted is fail"):
        acquire(env, settings=settings)
    assert host_stats(env)["exhausted"] == 1 and waiting(env) == 0
    holder.release()
    assert acquire(env, settings=settings).hit, "with room again it is served as usual"


def test_on_exhausted_direct_opens_a_one_off_transport_past_the_limit(env: Env) -> None:
    settings = cfg(max_connections=1, max_channels=1, on_exhausted=OnExhausted.DIRECT)
    holder = acquire(env, settings=settings)
    direct = acquire(env, settings=settings)
    assert not direct.hit and direct.conn is not holder.conn and env.connector.connects == 2
    stats = host_stats(env)
    assert stats["directConnections"] == 1 and stats["poolMisses"] == 2 and stats["waits"] == 0
    direct.release()
    wait_until(lambda: env.connector.conns[1].closes == 1, "the one-off transport closed")
    holder.release()
    again = acquire(env, settings=settings)
    assert again.hit and again.conn is holder.conn, "the pooled transport serves the next request"
    assert env.connector.conns[0].closes == 0


def test_the_idle_sweep_comes_every_cleanup_interval(env: Env) -> None:
    settings = cfg(idle_timeout=10.0, cleanup_interval=30.0)
    acquire(env, settings=settings).release()
    env.clock.advance(11)
    env.pool.sweep()
    assert len(env.pool.entries()) == 1, "idle, but its sweep is not due yet"
    env.clock.advance(20)
    env.pool.sweep()
    assert env.pool.entries() == [] and host_stats(env)["closedIdle"] == 1


def test_settings_from_the_wire() -> None:
    s = PoolSettings.from_dict({"priority": "high", "on_exhausted": "direct", "cleanup_interval": 5})
    assert (s.priority, s.on_exhausted, s.cleanup_interval) == (Priority.HIGH, OnExhausted.DIRECT, 5)
    assert PoolSettings.from_dict(s.to_dict()) == s
    assert s.to_dict()["on_exhausted"] == "direct" and s.to_dict()["priority"] == 3
    assert PoolSettings.from_dict({"priority": 1}).priority is Priority.LOW
    for bad in ({"priority": "urgent"}, {"priority": 7}, {"on_exhausted": "retry"}, {"on_exhausted": True}):
        with pytest.raises(ValueError, match="must be one of"):
            PoolSettings.from_dict(bad)
