# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's bookkeeping: which transport serves which request, and when to open or close one.

Free of sockets and Paramiko on purpose: the daemon hands it a *connector* that opens real
transports, the unit tests hand it a fake connector and a fake clock. Every decision about
reuse, limits, fairness, idle timeout and health lives here; doing the I/O is the caller's
job and always happens outside the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

# The origin's statistic names, kept verbatim so its dashboards keep working.
ORIGIN_COUNTERS = (
    "poolHits",
    "poolMisses",
    "activeConnections",
    "idleConnections",
    "totalConnections",
    "healthCheckFailures",
    "healthChecksPassed",
)


class PoolError(Exception):
    """A request the pool could not serve. ``kind`` tells the worker how to report it."""

    kind = "connect"

    def __init__(self, message: str, kind: Optional[str] = None) -> None:
        super().__init__(message)
        if kind:
            self.kind = kind


class PoolExhausted(PoolError):
    kind = "exhausted"


class Conn(Protocol):
    """What the pool needs of a transport."""

    def is_active(self) -> bool: ...

    def close(self) -> None: ...


class Connector(Protocol):
    def connect(self, key: PoolKey, spec: Dict[str, Any]) -> Conn: ...


@dataclass(frozen=True)
class PoolKey:
    """Inventory host, port and user, plus a salted fingerprint of the credentials.

    Two requests share transports only when all four match, so a session authenticated
    with one password or key is never handed to a request that carries another.
    """

    host: str
    port: int
    user: str
    cred: str = ""

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass
class PoolSettings:
    max_connections: int = 5
    max_channels: int = 10
    idle_timeout: float = 60.0
    wait_timeout: float = 60.0
    max_waiters: int = 1000
    health_checks: bool = True
    health_check_interval: float = 30.0
    keepalive_interval: float = 10.0
    keepalive_max_missed: int = 3
    #: Recycle a transport after this many channels (Paramiko never prunes its channel table).
    max_transport_channels: int = 5000

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> PoolSettings:
        """Settings from a request; raises ValueError for a value of the wrong type or range.

        Checked here, before the pool stores them: a key pool holding a bad value would make
        every later sweep fail, for every host.
        """
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        defaults = cls()
        for name, value in values.items():
            default = getattr(defaults, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"pool setting {name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"pool setting {name} must be a number")
            elif isinstance(default, int):
                if value != int(value) or not 1 <= value <= 1_000_000:
                    raise ValueError(f"pool setting {name} must be a whole number from 1 to 1000000")
                values[name] = int(value)
            elif not 0 <= value <= 10 * 365 * 86400:
                raise ValueError(f"pool setting {name} is out of range")
        return cls(**values)


_ids = itertools.count(1)


@dataclass
class Entry:
    """One pooled transport."""

    key: PoolKey
    conn: Any
    created: float
    last_used: float
    max_channels: int
    id: int = field(default_factory=lambda: next(_ids))
    in_use: int = 0
    opened: int = 0
    dead: bool = False
    retire: bool = False
    checking: bool = False
    last_checked: float = 0.0

    @property
    def usable(self) -> bool:
        return not (self.dead or self.retire)


@dataclass
class Lease:
    """One channel slot on one transport, held for the length of one operation."""

    pool: Pool
    entry: Entry
    hit: bool
    waited: float = 0.0
    released: bool = False

    @property
    def conn(self) -> Any:
        return self.entry.conn

    def release(self, *, broken: bool = False, refused: bool = False) -> None:
        self.pool.release(self, broken=broken, refused=refused)


_CONNECT = object()


class _Waiter:
    __slots__ = ("error", "grant")

    def __init__(self) -> None:
        self.grant: Any = None
        self.error: Optional[BaseException] = None


@dataclass
class _KeyPool:
    key: PoolKey
    settings: PoolSettings
    entries: List[Entry] = field(default_factory=list)
    waiters: Deque[_Waiter] = field(default_factory=deque)
    connecting: int = 0
    #: The server's real MaxSessions once a refused channel has taught it to us.
    learned_max_channels: Optional[int] = None

    def channel_limit(self) -> int:
        limit = self.settings.max_channels
        if self.learned_max_channels is not None:
            limit = min(limit, self.learned_max_channels)
        return max(1, limit)


def _new_counters() -> Dict[str, float]:
    return {
        "poolHits": 0,
        "poolMisses": 0,
        "healthCheckFailures": 0,
        "healthChecksPassed": 0,
        "connectFailures": 0,
        "exhausted": 0,
        "closedIdle": 0,
        "closedDead": 0,
        "evicted": 0,
        "channelsRefused": 0,
        "waits": 0,
        "waitSeconds": 0.0,
        "peakConnections": 0,
    }


class Pool:
    """Thread-safe pool of transports keyed by :class:`PoolKey`."""

    def __init__(
        self,
        connector: Connector,
        clock: Callable[[], float] = time.monotonic,
        on_event: Optional[Callable[..., None]] = None,
    ) -> None:
        self._connector = connector
        self._clock = clock
        self._cond = threading.Condition()
        self._keys: Dict[PoolKey, _KeyPool] = {}
        self._host_counters: Dict[str, Dict[str, float]] = {}
        self._on_event = on_event or (lambda *a, **k: None)

    # -- acquiring and releasing -------------------------------------------------

    def acquire(self, key: PoolKey, settings: PoolSettings, spec: Dict[str, Any]) -> Lease:
        """Return a lease on a healthy transport for ``key``, opening one if allowed.

        Waits in a first-come first-served queue while the key is at its limits, up to
        ``settings.wait_timeout``; then raises :class:`PoolExhausted`.
        """
        start = self._clock()
        with self._cond:
            kp = self._keys.get(key)
            if kp is None:
                kp = self._keys[key] = _KeyPool(key, settings)
            kp.settings = settings
            grant = None if kp.waiters else self._try_take(kp)
            waited = 0.0
            if grant is None:
                grant = self._wait(kp, start)
                waited = self._clock() - start
                counters = self._counters(key)
                counters["waits"] += 1
                counters["waitSeconds"] += waited
            if isinstance(grant, Lease):
                grant.waited = waited
                self._counters(key)["poolHits"] += 1
                self._on_event("reused", key=key.label, transport=grant.entry.id)
                return grant
        return self._open(kp, spec)

    def _wait(self, kp: _KeyPool, start: float) -> Any:
        settings = kp.settings
        if len(kp.waiters) >= settings.max_waiters:
            raise self._exhausted(kp)
        waiter = _Waiter()
        kp.waiters.append(waiter)
        # The queue may now hold more than the handshakes in flight can carry: start another.
        self._dispatch(kp)
        deadline = start + settings.wait_timeout
        try:
            while waiter.grant is None and waiter.error is None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise self._exhausted(kp)
                self._cond.wait(min(remaining, 1.0))
        finally:
            if waiter in kp.waiters:
                kp.waiters.remove(waiter)
                # A grant may have been handed to us just as we gave up: pass it on.
                if waiter.grant is not None and waiter.error is None:
                    self._return_grant(kp, waiter.grant)
        if waiter.error is not None:
            raise waiter.error
        return waiter.grant

    def _return_grant(self, kp: _KeyPool, grant: Any) -> None:
        if grant is _CONNECT:
            kp.connecting -= 1
        else:
            grant.entry.in_use -= 1
            grant.entry.opened -= 1
        self._dispatch(kp)

    def _exhausted(self, kp: _KeyPool) -> PoolExhausted:
        self._counters(kp.key)["exhausted"] += 1
        self._on_event("exhausted", key=kp.key.label, max=kp.settings.max_connections)
        return PoolExhausted(
            f"Connection pool exhausted for {kp.key.host}:{kp.key.port} (max: {kp.settings.max_connections}); "
            f"waited {kp.settings.wait_timeout:g}s: raise max_connections or pool_wait_timeout, or use fewer forks"
        )

    def _try_take(self, kp: _KeyPool) -> Any:
        """Hand out a slot on an existing transport, a ticket to open one, or None (wait)."""
        now = self._clock()
        best: Optional[Entry] = None
        for entry in list(kp.entries):
            if not entry.usable or entry.in_use >= entry.max_channels:
                continue
            if not entry.conn.is_active():
                # The cheap check before reuse: the reader thread has seen EOF.
                entry.dead = True
                self._reap(kp, entry, "dead")
                continue
            if best is None or (entry.in_use, entry.last_used) > (best.in_use, best.last_used):
                best = entry
        if best is not None:
            best.in_use += 1
            best.opened += 1
            best.last_used = now
            if best.opened >= kp.settings.max_transport_channels:
                best.retire = True
            return Lease(self, best, hit=True)
        # A handshake already under way will bring room for several requests: wait for it
        # rather than pay another handshake (and another MaxStartups slot).
        # Demand counts the request being served: queued (from _dispatch) or not (empty queue).
        demand = max(len(kp.waiters), 1)
        if kp.connecting and demand <= kp.connecting * (kp.channel_limit() - 1):
            return None
        if len(kp.entries) + kp.connecting < kp.settings.max_connections:
            kp.connecting += 1
            return _CONNECT
        return None

    def _open(self, kp: _KeyPool, spec: Dict[str, Any]) -> Lease:
        key = kp.key
        self._on_event("connecting", key=key.label)
        try:
            conn = self._connector.connect(key, spec)
        except BaseException as e:
            with self._cond:
                kp.connecting -= 1
                self._counters(key)["connectFailures"] += 1
                if not kp.connecting and not any(en.usable for en in kp.entries):
                    # Everyone queued behind this handshake would fail the same way:
                    # tell them now instead of letting each retry (fail2ban counts).
                    while kp.waiters:
                        kp.waiters.popleft().error = e
                self._dispatch(kp)
                self._forget_if_empty(kp)
                self._cond.notify_all()
            raise
        with self._cond:
            kp.connecting -= 1
            if self._keys.get(key) is kp:
                now = self._clock()
                entry = Entry(
                    key=key,
                    conn=conn,
                    created=now,
                    last_used=now,
                    last_checked=now,
                    max_channels=kp.channel_limit(),
                    in_use=1,
                    opened=1,
                )
                kp.entries.append(entry)
                counters = self._counters(key)
                counters["poolMisses"] += 1
                counters["peakConnections"] = max(counters["peakConnections"], len(kp.entries))
                self._on_event("created", key=key.label, transport=entry.id)
                self._dispatch(kp)
                return Lease(self, entry, hit=False, waited=0.0)
        # close_all() ran during the handshake: nobody may use this transport.
        self._close(Entry(key=key, conn=conn, created=0.0, last_used=0.0, max_channels=0), "shutdown")
        raise PoolError("pool daemon is shutting down", kind="shutdown")

    def release(self, lease: Lease, *, broken: bool = False, refused: bool = False) -> None:
        to_close = None
        with self._cond:
            if lease.released:
                return
            lease.released = True
            entry = lease.entry
            kp = self._keys.get(entry.key)
            others = entry.in_use - 1
            entry.in_use = others
            entry.last_used = self._clock()
            if refused:
                self._counters(entry.key)["channelsRefused"] += 1
                if others >= 1:
                    # The server said no to one more channel: this is its MaxSessions.
                    entry.max_channels = others
                    if kp is not None:
                        kp.learned_max_channels = min(kp.learned_max_channels or others, others)
                else:
                    broken = True
            if broken:
                entry.dead = True
            if kp is not None:
                if not entry.usable and entry.in_use == 0 and entry in kp.entries:
                    kp.entries.remove(entry)
                    if entry.dead:
                        self._counters(entry.key)["closedDead"] += 1
                    to_close = entry
                self._dispatch(kp)
                self._forget_if_empty(kp)
            self._cond.notify_all()
        if to_close is not None:
            self._close(to_close, "dead" if to_close.dead else "retired")

    def _dispatch(self, kp: _KeyPool) -> None:
        """Serve queued requests, oldest first, while there is room."""
        while kp.waiters:
            grant = self._try_take(kp)
            if grant is None:
                break
            kp.waiters.popleft().grant = grant
        self._cond.notify_all()

    def _reap(self, kp: _KeyPool, entry: Entry, reason: str) -> None:
        """Remove an entry nobody uses; close it off the lock's critical path."""
        if entry.in_use == 0 and entry in kp.entries:
            kp.entries.remove(entry)
            if reason == "dead":
                self._counters(entry.key)["closedDead"] += 1
            threading.Thread(target=self._close, args=(entry, reason), daemon=True).start()

    def _close(self, entry: Entry, reason: str) -> None:
        self._on_event("closed", key=entry.key.label, transport=entry.id, reason=reason)
        # Closing a broken transport may fail in any way; it is gone either way.
        with contextlib.suppress(Exception):
            entry.conn.close()

    def _forget_if_empty(self, kp: _KeyPool) -> None:
        if not kp.entries and not kp.waiters and not kp.connecting and self._keys.get(kp.key) is kp:
            del self._keys[kp.key]

    # -- maintenance -------------------------------------------------------------

    def sweep(self) -> Tuple[List[Entry], List[Entry]]:
        """Close idle and dead transports; return (closed, due for a health check).

        The caller runs the health checks (I/O) and reports each with :meth:`report_health`.
        """
        closed: List[Entry] = []
        due: List[Entry] = []
        with self._cond:
            now = self._clock()
            for kp in list(self._keys.values()):
                for entry in list(kp.entries):
                    if entry.in_use or entry.checking:
                        continue
                    idle = now - entry.last_used
                    if not entry.usable or not entry.conn.is_active():
                        reason = "closedDead" if (entry.dead or not entry.conn.is_active()) else "evicted"
                        self._counters(entry.key)[reason] += 1
                    elif idle >= kp.settings.idle_timeout:
                        self._counters(entry.key)["closedIdle"] += 1
                    else:
                        if kp.settings.health_checks and now - entry.last_checked >= kp.settings.health_check_interval:
                            entry.checking = True
                            due.append(entry)
                        continue
                    kp.entries.remove(entry)
                    closed.append(entry)
                self._dispatch(kp)
                self._forget_if_empty(kp)
        for entry in closed:
            self._close(entry, "idle" if entry.usable else "dead")
        if closed:
            self._on_event("closed_idle", count=len(closed))
        return closed, due

    def report_health(self, entry: Entry, ok: bool) -> None:
        """Record a health check's outcome; a failed transport is dropped."""
        to_close = None
        with self._cond:
            entry.checking = False
            entry.last_checked = self._clock()
            counters = self._counters(entry.key)
            if ok:
                counters["healthChecksPassed"] += 1
                return
            counters["healthCheckFailures"] += 1
            entry.dead = True
            kp = self._keys.get(entry.key)
            if kp is not None and entry.in_use == 0 and entry in kp.entries:
                kp.entries.remove(entry)
                to_close = entry
                self._forget_if_empty(kp)
        self._on_event("health_check_failed", key=entry.key.label, transport=entry.id)
        if to_close is not None:
            self._close(to_close, "health check failed")

    def mark_dead(self, entry: Entry) -> None:
        """A transport found dead outside a health check (keepalives, a failed channel)."""
        with self._cond:
            entry.dead = True
            kp = self._keys.get(entry.key)
            if kp is not None:
                self._reap(kp, entry, "dead")
                self._dispatch(kp)
                self._forget_if_empty(kp)

    def evict(self, match: Callable[[PoolKey], bool]) -> int:
        """Close the transports of every matching key (``meta: reset_connection``, flush)."""
        closed: List[Entry] = []
        count = 0
        with self._cond:
            for kp in list(self._keys.values()):
                if not match(kp.key):
                    continue
                for entry in list(kp.entries):
                    count += 1
                    entry.retire = True
                    self._counters(entry.key)["evicted"] += 1
                    if entry.in_use == 0:
                        kp.entries.remove(entry)
                        closed.append(entry)
                self._forget_if_empty(kp)
        for entry in closed:
            self._close(entry, "evicted")
        return count

    def entries(self) -> List[Entry]:
        with self._cond:
            return [e for kp in self._keys.values() for e in kp.entries]

    def close_all(self) -> int:
        with self._cond:
            entries = [e for kp in self._keys.values() for e in kp.entries]
            for kp in self._keys.values():
                kp.entries.clear()
                while kp.waiters:
                    kp.waiters.popleft().error = PoolError("pool daemon is shutting down", kind="shutdown")
            self._keys.clear()
            self._cond.notify_all()
        for entry in entries:
            self._close(entry, "shutdown")
        return len(entries)

    def is_empty(self) -> bool:
        with self._cond:
            return not self._keys

    # -- statistics --------------------------------------------------------------

    def _counters(self, key: PoolKey) -> Dict[str, float]:
        counters = self._host_counters.get(key.host)
        if counters is None:
            counters = self._host_counters[key.host] = _new_counters()
        return counters

    def stats(self) -> Dict[str, Any]:
        """The origin's counters, overall and per inventory host, plus our own."""
        with self._cond:
            hosts: Dict[str, Dict[str, Any]] = {}
            for host, counters in self._host_counters.items():
                hosts[host] = dict(counters, activeConnections=0, idleConnections=0, totalConnections=0,
                                   waiting=0, connecting=0, channelsInUse=0)
            for kp in self._keys.values():
                h = hosts.setdefault(kp.key.host, dict(_new_counters(), activeConnections=0, idleConnections=0,
                                                       totalConnections=0, waiting=0, connecting=0, channelsInUse=0))
                h["waiting"] += len(kp.waiters)
                h["connecting"] += kp.connecting
                for entry in kp.entries:
                    h["totalConnections"] += 1
                    h["channelsInUse"] += entry.in_use
                    h["activeConnections" if entry.in_use else "idleConnections"] += 1
            total: Dict[str, Any] = {}
            for h in hosts.values():
                for name, value in h.items():
                    total[name] = total.get(name, 0) + value
            for name in ORIGIN_COUNTERS:
                total.setdefault(name, 0)
            for h in hosts.values():
                h["waitSeconds"] = round(h["waitSeconds"], 6)
            if "waitSeconds" in total:
                total["waitSeconds"] = round(total["waitSeconds"], 6)
            return {"total": total, "hosts": hosts}

    def snapshot(self) -> List[Dict[str, Any]]:
        """The live transports, for ``status``."""
        now = self._clock()
        with self._cond:
            return [
                {
                    "id": e.id,
                    "key": e.key.label,
                    "host": e.key.host,
                    "port": e.key.port,
                    "user": e.key.user,
                    "age": round(now - e.created, 3),
                    "idle": round(now - e.last_used, 3) if not e.in_use else 0.0,
                    "channels_in_use": e.in_use,
                    "max_channels": e.max_channels,
                    "channels_opened": e.opened,
                    "state": "dead" if e.dead else "retiring" if e.retire else "active" if e.in_use else "idle",
                }
                for kp in self._keys.values()
                for e in kp.entries
            ]
