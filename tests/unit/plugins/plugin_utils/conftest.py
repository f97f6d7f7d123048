"""Fixtures of the daemon's unit tests: a daemon whose transports come from the test module's
fake ``server`` fixture, and a worker bound to it (a module may define its own instead)."""

from __future__ import annotations

from typing import Iterator

import pytest
from daemon_fakes import FakeDaemon, Worker
from fake_ssh import FakeServer


@pytest.fixture
def daemon(server: FakeServer) -> Iterator[FakeDaemon]:
    d = FakeDaemon(server)
    yield d
    d.pool.close_all()
    for t in server.transports:
        t.release_fds()


@pytest.fixture
def worker(daemon: FakeDaemon) -> Iterator[Worker]:
    w = Worker(daemon)
    w.bind()
    yield w
    w.close()
