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
dropped. Credentials go only where the task's own options send them: the spec is the one its worker
bound, for its own (or delegated) host.

A warm handshake that fails is not retried and not reported to anyone then: the next request of that
key is given that failure, once and if it comes within :data:`FAILURE_KEPT` seconds, as if it had
failed itself, so a wrong password costs one login attempt per task as it would without warming
(account lockouts, fail2ban). Later requests try on their own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Deque, Dict, Optional, Tuple

from ..errors import PoolError
from ..pool.core import WarmFailed
from ..pool.settings import PoolKey

if TYPE_CHECKING:
    from .session import Binding

log = logging.getLogger("pooled_ssh.daemon")

#: Warm handshakes at once (each is a thread for as long as its login takes).
MAX_OPENING = 8
#: Warm requests waiting for a free handshake; past it they are dropped.
MAX_QUEUED = 256
#: How long a warm handshake's failure waits for the key's next request.
FAILURE_KEPT = 60.0


@dataclass
class WarmCounters:
    """What the daemon's status reports of warming."""

    #: Transports opened ahead of their first request.
    opened: int = 0
    #: Warm handshakes that failed (their failure went to the key's next request, if it came soon).
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
        self._queued: Dict[PoolKey, Binding] = {}
        self._threads = 0
        self._failures: Dict[PoolKey, Tuple[float, BaseException]] = {}

    def offer(self, binding: Binding) -> bool:
        """Warm ``binding``'s key unless there is nothing to do or no room; whether it was taken.

        A handshake started here is counted in the pool before this returns, so a request for the key
        that comes next waits for it rather than opening another."""
        with self._lock:
            if binding.key in self._queued or len(self._queue) >= MAX_QUEUED:
                self.counters.skipped += 1
                return False
            if self._threads < MAX_OPENING:
                if not binding.daemon.pool.reserve_warm(binding.key, binding.settings):
                    self.counters.skipped += 1
                    return False
                self._threads += 1
                threading.Thread(target=self._work, args=(binding, True), name="pooled_ssh-warm", daemon=True).start()
                return True
            self._queue.append(binding)
            self._queued[binding.key] = binding
            return True

    def failure(self, key: PoolKey) -> Optional[BaseException]:
        """The failure of the key's warm handshake, handed out once and only while fresh."""
        with self._lock:
            kept = self._failures.pop(key, None)
        if kept is None or self._clock() - kept[0] > FAILURE_KEPT:
            return None
        return kept[1]

    def _work(self, binding: Binding, reserved: bool) -> None:
        current: Optional[Binding] = binding
        while current is not None:
            self._open(current, reserved)
            with self._lock:
                current = self._queue.popleft() if self._queue else None
                if current is None:
                    self._threads -= 1
                else:
                    del self._queued[current.key]
            reserved = False

    def _open(self, binding: Binding, reserved: bool) -> None:
        pool = binding.daemon.pool
        if not reserved and not pool.reserve_warm(binding.key, binding.settings):
            with self._lock:
                self.counters.skipped += 1
            return
        try:
            binding.open_warm()
        except WarmFailed as e:
            log.info("%s: warm open failed: %s", binding.spec.where, e.cause)
            with self._lock:
                self.counters.failed += 1
                self._forget_old_failures()
                if not e.told:  # nobody waited for it: the key's next request gets it
                    self._failures[binding.key] = (self._clock(), e.cause)
            return
        except PoolError as e:  # the pool closed before the handshake began
            log.debug("%s: not warmed: %s", binding.spec.where, e)
            return
        with self._lock:
            self.counters.opened += 1
        log.debug("%s: transport opened ahead of its first request", binding.spec.where)

    def _forget_old_failures(self) -> None:
        now = self._clock()
        for key in [k for k, (at, _e) in self._failures.items() if now - at > FAILURE_KEPT]:
            del self._failures[key]
