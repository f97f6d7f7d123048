# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Concurrent handshakes per server address, kept below what the server's ``MaxStartups`` allows."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Dict, List, Optional, Tuple

from ..errors import ErrorKind, PoolError


class HandshakeLimiter:
    """Caps concurrent handshakes per server address so forks never trip ``MaxStartups``.

    The cap shrinks when the server drops a handshake before its banner (it told us
    its real limit) and never grows back above the configured value. A drop also pauses
    new handshakes to that address for the retry's backoff: sshd counts a connection as
    unauthenticated until its listener hears that the login finished, so handshakes sent
    back to back are dropped even one at a time; everyone waiting backs off together.

    Slots go first come, first served, and a retry keeps its first ticket: with fifty forks
    on one address, a request the server dropped goes next rather than racing the others
    again, so no single request can be dropped until its own budget runs out.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: Dict[Tuple[str, int], int] = {}
        self._limit: Dict[Tuple[str, int], int] = {}
        self._not_before: Dict[Tuple[str, int], float] = {}
        self._waiting: Dict[Tuple[str, int], List[int]] = {}  # tickets, a heap per address
        self._tickets = itertools.count()

    def acquire(self, address: Tuple[str, int], limit: int, deadline: float, ticket: Optional[int] = None) -> int:
        """Wait for a slot; returns the ticket to pass back when retrying after a drop."""
        with self._cond:
            if ticket is None:
                ticket = next(self._tickets)
            waiting = self._waiting.setdefault(address, [])
            heapq.heappush(waiting, ticket)
            self._cond.notify_all()  # for whoever watches the line (tests)
            try:
                while True:
                    current = self._active.get(address, 0)
                    now = time.monotonic()
                    paused = self._not_before.get(address, 0.0) - now
                    if paused <= 0 and waiting[0] == ticket and current < min(limit, self._limit.get(address, limit)):
                        self._active[address] = current + 1
                        return ticket
                    remaining = deadline - now
                    if remaining <= 0:
                        raise PoolError(
                            f"{address[0]}:{address[1]}: timed out waiting for a handshake slot "
                            f"({current} handshakes to this address under way); raise the timeout",
                            kind=ErrorKind.CONNECT,
                        )
                    self._cond.wait(min(remaining, max(paused, 0.001) if paused > 0 else 1.0))
            finally:
                waiting.remove(ticket)
                heapq.heapify(waiting)
                if not waiting:
                    self._waiting.pop(address, None)
                self._cond.notify_all()  # the next in line may go now

    def release(self, address: Tuple[str, int], dropped: bool, backoff: float = 0.0) -> None:
        with self._cond:
            current = self._active.get(address, 1)
            if dropped:
                self._limit[address] = max(1, min(self._limit.get(address, current), current - 1))
                if backoff > 0:
                    until = time.monotonic() + backoff
                    self._not_before[address] = max(self._not_before.get(address, 0.0), until)
            if current <= 1:
                self._active.pop(address, None)
            else:
                self._active[address] = current - 1
            self._cond.notify_all()

    def limit(self, address: Tuple[str, int]) -> Optional[int]:
        with self._cond:
            return self._limit.get(address)
