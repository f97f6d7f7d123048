"""The keepalive probe: callers that meet one in flight share its answer, never a guess.

A health check's probe and a keepalive met on a transport that had just been leased: the second
caller answered from the time of the last reply (about one health-check interval ago, as old as
its timeout), called the live transport dead, and the keepalive closed it under the command it
was running (one host UNREACHABLE in a 2,000-host run).
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh import transport
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.transport import PooledTransport


class Event(threading.Event):
    """An event that says when its second waiter starts waiting on it."""

    def __init__(self, second_waiter: threading.Event) -> None:
        super().__init__()
        self._second_waiter = second_waiter
        self._waiters = 0
        self._count_lock = threading.Lock()

    def wait(self, timeout: Optional[float] = None) -> bool:
        with self._count_lock:
            self._waiters += 1
            if self._waiters == 2:
                self._second_waiter.set()
        return super().wait(timeout)


class SlowServer:
    """Paramiko's transport as the probe sees it: the first keepalive's reply waits for ``reply``."""

    def __init__(self) -> None:
        self.requests = 0
        self.first_sent = threading.Event()
        self.reply = threading.Event()
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def global_request(self, kind: str, wait: bool = True) -> Any:
        self.requests += 1
        if self.requests == 1:
            self.first_sent.set()
            if not self.reply.wait(10):
                return None
        return object()


def test_a_probe_that_meets_one_in_flight_waits_for_its_answer(monkeypatch: Any) -> None:
    server = SlowServer()
    # The health check's request gets its reply only once the keepalive waits too (no timing).
    second_waiter = threading.Event()
    flight_class = transport._ProbeFlight
    monkeypatch.setattr(transport, "_ProbeFlight", lambda: flight_class(done=Event(second_waiter)))
    threading.Thread(target=lambda: second_waiter.wait(10) and server.reply.set(), daemon=True).start()
    pt = PooledTransport(server, "deploy@web1:22")
    results: List[bool] = []
    health_check = threading.Thread(target=lambda: results.append(pt.probe(30.0)))
    health_check.start()
    assert server.first_sent.wait(10), "the health check's keepalive was never sent"
    keepalive_answer = pt.probe(30.0)  # the keepalive of the transport, just leased
    health_check.join(10)
    assert second_waiter.is_set(), "the keepalive did not wait for the probe in flight"
    assert keepalive_answer is True, "a live transport was called dead"
    assert results == [True]
    assert server.requests == 1, "both callers share one keepalive request"


def test_a_silent_server_is_dead_for_every_caller_at_its_deadline() -> None:
    server = SlowServer()
    pt = PooledTransport(server, "deploy@web1:22")
    results: List[bool] = []
    first = threading.Thread(target=lambda: results.append(pt.probe(0.2)))
    first.start()
    assert server.first_sent.wait(10)
    assert pt.probe(0.2) is False
    first.join(10)
    assert results == [False]
    flight = pt._probe_flight
    assert flight is not None
    server.reply.set()  # the request thread ends; a later probe asks again
    assert flight.done.wait(10)
    assert pt.probe(5.0) is True and server.requests == 2


def test_a_probe_thread_that_cannot_start_leaves_no_probe_in_flight(monkeypatch: Any) -> None:
    server = SlowServer()
    server.reply.set()
    pt = PooledTransport(server, "deploy@web1:22")

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    try:
        pt.probe(1.0)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the thread's failure was hidden")
    monkeypatch.undo()
    # A probe left in flight by the failed start would make every later keepalive on the
    # transport wait for an answer that never comes: "dead".
    assert pt.probe(5.0) is True


def test_a_server_that_refuses_the_keepalive_request_is_alive() -> None:
    """Servers that do not know ``keepalive@openssh.com`` answer with a failure: Paramiko returns
    None for it, as for a transport that died; only the transport's state tells them apart."""

    class Refusing(SlowServer):
        def global_request(self, kind: str, wait: bool = True) -> Any:
            self.requests += 1
            return None

    server = Refusing()
    pt = PooledTransport(server, "deploy@web1:22")
    assert pt.probe(5.0) is True
    server.active = False
    assert pt.probe(5.0) is False
