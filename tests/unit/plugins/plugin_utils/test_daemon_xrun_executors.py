"""The daemon's table of remote executors: started in the background while the first run goes the
plain way, one start per transport and key, idle ones closed.

The executor itself is tested on real pipes (``executor/test_remote_executor.py``); here its
channel is a stub, because only the table's bookkeeping is under test.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import xrun
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import manager
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import messages as msgs
from daemon_fakes import wait_for


class Channel:
    def __init__(self) -> None:
        self.closed = False
        self.sent = b""

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        raise TimeoutError

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def ended(self) -> bool:
        return self.closed


class Started(manager.Executor):
    """An executor past its hello."""

    def __init__(self) -> None:
        super().__init__(Channel())
        self._alive = True


class Transport:
    label = "127.0.0.1:22"
    sessions_tight = False


def request(idle: float = 60.0) -> msgs.XRun:
    return msgs.XRun(key="k", start="python3 -c ...", head_len=0, zip_len=0, idle_timeout=idle)


def settled(pt: Any) -> bool:
    """Whether no executor start is going on for the transport."""
    return not any(lock.locked() for lock in xrun._starting.get(pt, {}).values())


def started(pt: Any, req: msgs.XRun) -> Optional[manager.Executor]:
    """The transport's executor once its background start is over (the first run goes the plain way)."""
    first = xrun._executor(pt, req, b"zip")
    assert first == (None, xrun.STARTING)
    wait_for(lambda: settled(pt), "the executor's start")
    return xrun._executor(pt, req, b"zip")[0]


def test_the_first_run_goes_the_plain_way_the_next_waits_for_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: List[Started] = []
    entered, release = threading.Event(), threading.Event()

    def start(pt: Any, req: msgs.XRun) -> Started:
        starts.append(Started())
        entered.set()
        release.wait(10)
        return starts[-1]

    monkeypatch.setattr(xrun, "_start", start)
    pt = Transport()
    assert xrun._executor(pt, request(), b"zip") == (None, xrun.STARTING)  # type: ignore[arg-type]
    assert entered.wait(10)
    second: List[object] = []
    waiting = threading.Thread(target=lambda: second.append(xrun._executor(pt, request(), b"zip")))  # type: ignore[arg-type]
    waiting.start()
    waiting.join(0.5)  # room for it to start another executor or to go the plain way, were it not waiting
    assert second == []
    release.set()
    waiting.join(10)
    assert second == [(starts[0], "")]
    assert xrun._executor(pt, request(), b"zip") == (starts[0], "")  # type: ignore[arg-type]
    assert len(starts) == 1
    assert starts[0].channel.sent[-len(b"zip") :] == b"zip"  # type: ignore[attr-defined]  # the payload went ahead


class _Later:
    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def test_executors_idle_past_their_timeout_are_closed_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    made = iter([Started(), Started()])
    monkeypatch.setattr(xrun, "_start", lambda pt, req: next(made))
    idle, kept = Transport(), Transport()
    short, forever = started(idle, request(idle=30.0)), started(kept, request(idle=0.0))
    assert short is not None and forever is not None
    assert xrun.expire_idle_executors() == 0  # just taken
    monkeypatch.setattr(manager, "time", _Later(31.0))
    assert xrun.expire_idle_executors() == 1
    assert not short.alive and short.channel.closed  # type: ignore[attr-defined]
    assert forever.alive
    assert xrun._known(idle) == {} and xrun._known(kept) == {"k": forever}  # type: ignore[arg-type]
