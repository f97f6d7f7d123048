# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's bookkeeping: which transport serves which request, and when to open or close one.

Free of sockets and Paramiko on purpose: the daemon hands it a *connector* that opens real
transports, the unit tests hand it a fake connector and a fake clock. Every decision about
reuse, limits, fairness, idle timeout and health lives here; doing the I/O is the caller's
job and always happens outside the lock. Each request's settings apply to that request
only: a waiter waits its own ``wait_timeout``, a request opens a transport only below its
own ``max_connections``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Dict, Generic, List, Optional, Tuple

from ..errors import ErrorKind, PoolError
from . import stats as _stats
from .entries import C, Connector, Entry, Grant, KeyPool, Lease, OpenTicket, Reservation, Waiter
from .settings import OnExhausted, PoolKey, PoolSettings


class PoolExhausted(PoolError):
    default_kind = ErrorKind.EXHAUSTED


def _shutting_down() -> PoolError:
    return PoolError("pool daemon is shutting down", kind=ErrorKind.SHUTDOWN)


class Pool(Generic[C]):
    """Thread-safe pool of transports keyed by :class:`PoolKey`."""

    def __init__(
        self,
        connector: Connector[C],
        clock: Callable[[], float] = time.monotonic,
        on_event: Optional[Callable[..., None]] = None,
    ) -> None:
        self._connector = connector
        self._clock = clock
        self._cond = threading.Condition()
        self._keys: Dict[PoolKey, KeyPool[C]] = {}
        self._counters = _stats.Counters()
        self._on_event = on_event or (lambda *a, **k: None)
        #: Transports held at most over every key; past it, idle ones are closed least recently used
        #: first to make room (the daemon sets it from its descriptor limit). None: no cap.
        self.max_transports: Optional[int] = None

    # -- acquiring and releasing -------------------------------------------------

    def acquire(self, key: PoolKey, settings: PoolSettings, target: Any) -> Lease[C]:
        """Return a lease on a healthy transport for ``key``, opening one if allowed.

        Waits in a first-come first-served queue while the key is at its limits, up to
        ``settings.wait_timeout``; then raises :class:`PoolExhausted`. ``target`` goes to the
        connector when a transport must be opened.
        """
        start = self._clock()
        with self._cond:
            kp = self._keys.get(key)
            if kp is None:
                kp = self._keys[key] = KeyPool(key)
            grant = None if kp.waiters else self._try_take(kp, settings)
            waited = 0.0
            # A warm handshake that will carry this request is its own login, made ahead: wait for it,
            # whatever on_exhausted says. Past what the handshakes under way carry, on_exhausted applies.
            carried = kp.warming and kp.handshakes_carry(len(kp.waiters) + 1, settings)
            if grant is None and self._at_limit(kp, settings) and not carried:
                if settings.on_exhausted is OnExhausted.FAIL:
                    raise self._exhausted(kp, settings, "on_exhausted is fail")
                if settings.on_exhausted is OnExhausted.DIRECT:
                    kp.connecting += 1
                    grant = OpenTicket.DIRECT
            if grant is None:
                grant = self._wait(kp, settings, start)
                waited = self._clock() - start
                counters = self._counters.of(key)
                counters["waits"] += 1
                counters["waitSeconds"] += waited
            if isinstance(grant, Lease):
                grant.waited = waited
                # A transport opened ahead (warming) counts as this request's login, not as a reuse.
                self._counters.of(key)["poolHits" if grant.hit else "poolMisses"] += 1
                self._on_event("reused" if grant.hit else "created", key=key.label, transport=grant.entry.id)
                return grant
        return self._open(kp, settings, target, one_off=grant is OpenTicket.DIRECT)

    @staticmethod
    def _at_limit(kp: KeyPool[C], settings: PoolSettings) -> bool:
        """No transport of the key has room and the key may open no more (call under the lock)."""
        return len(kp.entries) + kp.connecting >= settings.max_connections

    def _wait(self, kp: KeyPool[C], settings: PoolSettings, start: float) -> Grant[C]:
        if len(kp.waiters) >= settings.max_waiters:
            raise self._exhausted(kp, settings)
        waiter: Waiter[C] = Waiter(settings)
        kp.waiters.append(waiter)
        # The queue may now hold more than the handshakes in flight can carry: start another.
        self._dispatch(kp)
        deadline = start + settings.wait_timeout
        try:
            while waiter.grant is None and waiter.error is None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise self._exhausted(kp, settings)
                self._cond.wait(min(remaining, 1.0))
        finally:
            if waiter in kp.waiters:
                kp.waiters.remove(waiter)
                # A grant may have been handed to us just as we gave up: pass it on.
                if waiter.grant is not None and waiter.error is None:
                    self._return_grant(kp, waiter.grant)
        if waiter.error is not None:
            raise waiter.error
        if waiter.grant is None:  # the loop above ends only with one of the two set
            raise RuntimeError("pool: a waiter left the queue with neither a grant nor an error")
        return waiter.grant

    def _return_grant(self, kp: KeyPool[C], grant: Grant[C]) -> None:
        if grant is OpenTicket.OPEN:
            kp.connecting -= 1
        elif isinstance(grant, Lease):
            grant.entry.in_use -= 1
            grant.entry.opened -= 1
        self._dispatch(kp)

    def _exhausted(self, kp: KeyPool[C], settings: PoolSettings, why: str = "") -> PoolExhausted:
        self._counters.of(kp.key)["exhausted"] += 1
        self._on_event("exhausted", key=kp.key.label, max=settings.max_connections)
        if why:
            advice = "raise max_connections, use fewer forks, or set on_exhausted to wait or direct"
        else:
            why = f"waited {settings.wait_timeout:g}s"
            advice = "raise max_connections or pool_wait_timeout, use fewer forks, or set on_exhausted to direct"
        return PoolExhausted(
            f"Connection pool exhausted for {kp.key.host}:{kp.key.port} (max: {settings.max_connections}); "
            f"{why}: {advice}"
        )

    def _try_take(self, kp: KeyPool[C], settings: PoolSettings) -> Optional[Grant[C]]:
        """Hand out a slot on an existing transport, a ticket to open one, or None (wait)."""
        best: Optional[Entry[C]] = None
        for entry in list(kp.entries):
            if not entry.usable or entry.in_use >= min(entry.max_channels, settings.max_channels):
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
            best.last_used = self._clock()
            best.settings = settings
            if best.opened >= settings.max_transport_channels:
                best.retire = True
            hit, best.ahead = not best.ahead, False
            return Lease(self, best, hit=hit, settings=settings)
        # A handshake already under way will bring room for several requests: wait for it
        # rather than pay another handshake (and another MaxStartups slot).
        # Demand counts the request being served: queued (from _dispatch) or not (empty queue).
        demand = max(len(kp.waiters), 1)
        if kp.connecting and kp.handshakes_carry(demand, settings):
            return None
        if len(kp.entries) + kp.connecting < settings.max_connections:
            kp.connecting += 1
            return OpenTicket.OPEN
        return None

    # -- warming -------------------------------------------------------------------

    def reserve_warm(self, key: PoolKey, settings: PoolSettings) -> Optional[Reservation[C]]:
        """Count a handshake under way for ``key`` if warming it takes nothing from anyone: the key has
        no transport, no handshake and nobody queued, and the pool is below its cap. Requests that come
        meanwhile wait for that handshake (it serves as many as a transport takes) instead of starting
        their own, or failing at ``max_connections``. None: nothing to do."""
        with self._cond:
            kp = self._keys.get(key)
            if kp is not None and (kp.entries or kp.connecting or kp.waiters):
                return None
            if settings.max_connections < 1 or (
                self.max_transports is not None and self.transport_count() >= self.max_transports
            ):
                return None
            if kp is None:
                kp = self._keys[key] = KeyPool(key)
            kp.connecting += 1
            kp.warming += 1
            return Reservation(kp)

    def open_reserved(self, reservation: Reservation[C], settings: PoolSettings, target: Any) -> None:
        """Open the transport :meth:`reserve_warm` counted and leave it in the pool, idle (or handed to
        whoever waits for it). Raises what the handshake raised; those waiting get that error too."""
        with self._cond:
            closed = self._keys.get(reservation.kp.key) is not reservation.kp  # close_all ran meanwhile
        if closed:
            self.cancel_reserved(reservation)
            raise _shutting_down()
        self._open(reservation.kp, settings, target, reservation=reservation)

    def cancel_reserved(self, reservation: Reservation[C]) -> None:
        """Give a reservation back unused (a thread that could not start, a bug): nobody waits for it."""
        with self._cond:
            if reservation.settled:
                return
            self._settle(reservation.kp, reservation)
            self._dispatch(reservation.kp)
            self._forget_if_empty(reservation.kp)
            self._cond.notify_all()

    @staticmethod
    def _settle(kp: KeyPool[C], reservation: Optional[Reservation[C]]) -> None:
        """A handshake counted in ``kp`` is over (call under the lock)."""
        kp.connecting -= 1
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            kp.warming -= 1

    def _open(
        self,
        kp: KeyPool[C],
        settings: PoolSettings,
        target: Any,
        one_off: bool = False,
        reservation: Optional[Reservation[C]] = None,
    ) -> Lease[C]:
        """Open a transport for the request; a ``one_off`` (past the limit) serves it alone and closes after.
        Past the pool's cap, idle transports are closed to make room, except for warming (``reservation``)."""
        key = kp.key
        warm = reservation is not None
        if not warm and self.max_transports is not None:
            excess = self.transport_count() - self.max_transports
            if excess > 0 and self.shed_idle(excess):
                self._on_event("shed", key=key.label, over=excess)
        self._on_event("connecting", key=key.label)
        try:
            conn = self._connector.connect(key, target)
        except BaseException as e:
            with self._cond:
                self._settle(kp, reservation)
                self._counters.of(key)["connectFailures"] += 1
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
            self._settle(kp, reservation)
            if self._keys.get(key) is kp:
                now = self._clock()
                entry = Entry(
                    key=key,
                    conn=conn,
                    created=now,
                    last_used=now,
                    last_checked=now,
                    last_swept=now,
                    max_channels=kp.channel_limit(settings),
                    settings=settings,
                    in_use=0 if warm else 1,  # a warm one goes to the pool idle: waiters take it now
                    opened=0 if warm else 1,
                    retire=one_off,
                    ahead=warm,
                )
                kp.entries.append(entry)
                counters = self._counters.of(key)
                if not warm:  # counted when its first request takes it
                    counters["poolMisses"] += 1
                if one_off:
                    counters["directConnections"] += 1
                counters["peakConnections"] = max(counters["peakConnections"], len(kp.entries))
                self._on_event("warmed" if warm else "created", key=key.label, transport=entry.id)
                self._dispatch(kp)
                return Lease(self, entry, hit=False, settings=settings, waited=0.0, released=warm)
        # close_all() ran during the handshake: nobody may use this transport.
        self._close(Entry(key=key, conn=conn, created=0.0, last_used=0.0, max_channels=0), "shutdown")
        raise _shutting_down()

    def release(self, lease: Lease[C], *, broken: bool = False, refused: bool = False) -> None:
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
            entry.settings = lease.settings
            if refused:
                self._counters.of(entry.key)["channelsRefused"] += 1
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
                        self._counters.of(entry.key)["closedDead"] += 1
                    to_close = entry
                self._dispatch(kp)
                self._forget_if_empty(kp)
            self._cond.notify_all()
        if to_close is not None:
            self._close(to_close, "dead" if to_close.dead else "retired")

    def _dispatch(self, kp: KeyPool[C]) -> None:
        """Serve queued requests while there is room (each by its own settings): the highest
        priority first, and within a priority the oldest first."""
        while kp.waiters:
            first = max(range(len(kp.waiters)), key=lambda i: (kp.waiters[i].settings.priority, -i))
            waiter = kp.waiters[first]
            grant = self._try_take(kp, waiter.settings)
            if grant is None:
                break
            del kp.waiters[first]
            waiter.grant = grant
        self._cond.notify_all()

    def _reap(self, kp: KeyPool[C], entry: Entry[C], reason: str) -> None:
        """Remove an entry nobody uses; close it off the lock's critical path."""
        if entry.in_use == 0 and entry in kp.entries:
            kp.entries.remove(entry)
            if reason == "dead":
                self._counters.of(entry.key)["closedDead"] += 1
            threading.Thread(target=self._close, args=(entry, reason), daemon=True).start()

    def _close(self, entry: Entry[C], reason: str) -> None:
        self._on_event("closed", key=entry.key.label, transport=entry.id, reason=reason)
        # Closing a broken transport may fail in any way; it is gone either way.
        with contextlib.suppress(Exception):
            entry.conn.close()

    def _forget_if_empty(self, kp: KeyPool[C]) -> None:
        if not kp.entries and not kp.waiters and not kp.connecting and self._keys.get(kp.key) is kp:
            del self._keys[kp.key]

    # -- maintenance -------------------------------------------------------------

    def _sweep_entry(self, entry: Entry[C], now: float) -> Optional[bool]:
        """True: close it; False: due for a health check; None: leave it (call under the lock)."""
        settings = entry.settings
        if not entry.usable or not entry.conn.is_active():
            reason = "closedDead" if (entry.dead or not entry.conn.is_active()) else "evicted"
            self._counters.of(entry.key)[reason] += 1
            return True
        if now - entry.last_swept >= settings.cleanup_interval:
            entry.last_swept = now
            if now - entry.last_used >= settings.idle_timeout:
                self._counters.of(entry.key)["closedIdle"] += 1
                return True
        if settings.health_checks and now - entry.last_checked >= settings.health_check_interval:
            entry.checking = True
            return False
        return None

    def sweep(self) -> Tuple[List[Entry[C]], List[Entry[C]]]:
        """Close idle and dead transports; return (closed, due for a health check).

        The caller runs the health checks (I/O) and reports each with :meth:`report_health`.
        """
        closed: List[Entry[C]] = []
        due: List[Entry[C]] = []
        with self._cond:
            now = self._clock()
            for kp in list(self._keys.values()):
                for entry in list(kp.entries):
                    if entry.in_use or entry.checking:
                        continue
                    verdict = self._sweep_entry(entry, now)
                    if verdict is False:
                        due.append(entry)
                    elif verdict:
                        kp.entries.remove(entry)
                        closed.append(entry)
                self._dispatch(kp)
                self._forget_if_empty(kp)
        for entry in closed:
            self._close(entry, "idle" if entry.usable else "dead")
        if closed:
            self._on_event("closed_idle", count=len(closed))
        return closed, due

    def report_health(self, entry: Entry[C], ok: bool) -> None:
        """Record a health check's outcome; a failed transport is dropped."""
        to_close = None
        with self._cond:
            entry.checking = False
            entry.last_checked = self._clock()
            counters = self._counters.of(entry.key)
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

    def mark_dead(self, entry: Entry[C]) -> None:
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
        closed: List[Entry[C]] = []
        count = 0
        with self._cond:
            for kp in list(self._keys.values()):
                if not match(kp.key):
                    continue
                for entry in list(kp.entries):
                    count += 1
                    entry.retire = True
                    self._counters.of(entry.key)["evicted"] += 1
                    if entry.in_use == 0:
                        kp.entries.remove(entry)
                        closed.append(entry)
                self._forget_if_empty(kp)
        for entry in closed:
            self._close(entry, "evicted")
        return count

    def shed_idle(self, count: int) -> int:
        """Close up to ``count`` idle transports, least recently used first (descriptor pressure)."""
        with self._cond:
            idle = sorted(
                (e for kp in self._keys.values() for e in kp.entries if e.in_use == 0), key=lambda e: e.last_used
            )[: max(0, count)]
            for entry in idle:
                kp = self._keys.get(entry.key)
                if kp is not None:
                    kp.entries.remove(entry)
                    self._counters.of(entry.key)["closedIdle"] += 1
                    self._forget_if_empty(kp)
        for entry in idle:
            self._close(entry, "shed")
        return len(idle)

    def transport_count(self) -> int:
        with self._cond:
            return sum(len(kp.entries) + kp.connecting for kp in self._keys.values())

    def entries(self) -> List[Entry[C]]:
        with self._cond:
            return [e for kp in self._keys.values() for e in kp.entries]

    def close_all(self) -> int:
        with self._cond:
            entries = [e for kp in self._keys.values() for e in kp.entries]
            for kp in self._keys.values():
                kp.entries.clear()
                while kp.waiters:
                    kp.waiters.popleft().error = _shutting_down()
            self._keys.clear()
            self._cond.notify_all()
        for entry in entries:
            self._close(entry, "shutdown")
        return len(entries)

    def is_empty(self) -> bool:
        with self._cond:
            return not self._keys

    # -- statistics --------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The healer service's counters, overall and per inventory host, plus our own."""
        with self._cond:
            return _stats.summarize(self._counters, self._keys.values())

    def snapshot(self) -> List[Dict[str, Any]]:
        """The live transports, for ``status``."""
        now = self._clock()
        with self._cond:
            return _stats.snapshot(self._keys.values(), now)
