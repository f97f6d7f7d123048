# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection warming: a host's transport opened before the request that needs it.

Ansible gives every task its host's connection plugin with that host's options, also a task that
needs no connection (``set_fact``, ``assert``, a role's argument validation). Such a worker, which
never connected, sends ``warm`` when it closes: the daemon opens that host's transport in the
background, so that the host's next module finds it open instead of paying the login then. On the
20-host diagnose role, whose argument validation runs on every host before the first module, the
logins then overlap that task and the first wave's modules instead of each wave's start.

Bounded, and it takes nothing from anyone: a key is warmed only when it has no transport, no
handshake under way and nobody queued, and the pool is below its transport cap (nothing is shed for
it); at most :data:`MAX_OPENING` warm handshakes at once and :data:`MAX_QUEUED` waiting, the rest
dropped. A request that comes during a warm handshake waits for it, whatever its ``on_exhausted``.
Credentials go only where the task's own options send them: the spec is the one its worker bound, for
its own (or delegated) host. Not warmed: a spec with ``proxy_jump`` (its bastions' transports are a
request's to open, under that request's limits).

A warm handshake adds no login attempt: it goes through the same connector as a request, whose
memory of a failed login (``ssh/connect.py``) answers the host's next request without knocking again,
and a key whose warm handshake failed is not warmed again for :data:`FAILURE_KEPT` seconds, however
many tasks without a connection come (a host that is down is not knocked at by each of them).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional, Set

from ..errors import PoolError
from ..pool.entries import Reservation
from ..pool.settings import PoolKey

if TYPE_CHECKING:
    from .session import Binding

log = logging.getLogger("pooled_ssh.daemon")

#: Warm handshakes at once (each is a thread for as long as its login takes).
MAX_OPENING = 8
#: Warm requests waiting for a free handshake; past it they are dropped.
MAX_QUEUED = 256
#: How long a key whose warm handshake failed is not warmed again (seconds).
FAILURE_KEPT = 60.0


@dataclass
class WarmCounters:
    """What the daemon's status reports of warming."""

    #: Transports opened ahead of their first request.
    opened: int = 0
    #: Warm handshakes that failed (the key is not warmed again for FAILURE_KEPT seconds).
    failed: int = 0
    #: Warm requests with nothing to do (a transport or handshake there already, the pool full, the queue full).
    skipped: int = 0


class Warmer:
    """The daemon's warm queue: :meth:`offer` from a session, handshakes on a few threads of its own."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counters = WarmCounters()
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: Deque[Binding] = collections.deque()
        self._queued: Set[PoolKey] = set()
        self._threads = 0
        #: When each key's last warm handshake failed.
        self._failed: Dict[PoolKey, float] = {}

    def offer(self, binding: Binding) -> bool:
        """Warm ``binding``'s key unless there is nothing to do or no room; whether it was taken.

        A handshake started here is counted in the pool before this returns, so a request for the key
        that comes next waits for it rather than opening another."""
        with self._lock:
            if (
                binding.key in self._queued
                or len(self._queue) >= MAX_QUEUED
                or binding.spec.proxy_jump
                or self._failed_lately(binding.key)
            ):
                self.counters.skipped += 1
                return False
            if self._threads >= MAX_OPENING:
                self._queue.append(binding)
                self._queued.add(binding.key)
                return True
            reservation = binding.daemon.pool.reserve_warm(binding.key, binding.settings)
            if reservation is None:
                self.counters.skipped += 1
                return False
            self._threads += 1
            try:
                threading.Thread(
                    target=self._work, args=(binding, reservation), name="pooled_ssh-warm", daemon=True
                ).start()
            except RuntimeError:  # no thread to be had: nothing held, nothing warmed
                self._threads -= 1
                binding.daemon.pool.cancel_reserved(reservation)
                self.counters.skipped += 1
                return False
            return True

    def _failed_lately(self, key: PoolKey) -> bool:
        """Whether the key's last warm handshake failed within FAILURE_KEPT (call under the lock)."""
        now = self._clock()
        for old in [k for k, at in self._failed.items() if now - at > FAILURE_KEPT]:
            del self._failed[old]
        return key in self._failed

    def _work(self, binding: Binding, reservation: Optional[Reservation[Any]]) -> None:
        current: Optional[Binding] = binding
        while current is not None:
            try:
                self._open(current, reservation)
            except Exception:  # a bug: this thread still serves the queue and is counted out
                log.exception("%s: warm open failed", current.spec.where)
            reservation = None
            with self._lock:
                current = self._next_queued()
                if current is None:
                    self._threads -= 1

    def _next_queued(self) -> Optional[Binding]:
        """The next queued key still worth warming: one whose warm handshake failed while it waited
        (another task queued it then) is not tried again (call under the lock)."""
        while self._queue:
            queued = self._queue.popleft()
            self._queued.remove(queued.key)
            if not self._failed_lately(queued.key):
                return queued
            self.counters.skipped += 1
        return None

    def _open(self, binding: Binding, reservation: Optional[Reservation[Any]]) -> None:
        pool = binding.daemon.pool
        if reservation is None:
            reservation = pool.reserve_warm(binding.key, binding.settings)
            if reservation is None:
                with self._lock:
                    self.counters.skipped += 1
                return
        try:
            binding.open_warm(reservation)
        except Exception as e:  # the connector's errors, the pool's shutdown, or a bug: warming only
            if not isinstance(e, PoolError):
                log.exception("%s: warm open failed", binding.spec.where)
            else:
                log.info("%s: warm open failed: %s", binding.spec.where, e)
            with self._lock:
                self.counters.failed += 1
                self._failed[binding.key] = self._clock()
            return
        finally:
            pool.cancel_reserved(reservation)  # nothing when the handshake settled it
        with self._lock:
            self.counters.opened += 1
        log.debug("%s: transport opened ahead of its first request", binding.spec.where)
