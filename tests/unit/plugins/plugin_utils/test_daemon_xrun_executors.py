"""The daemon's table of remote executors: one start per transport and key, idle ones closed.

The executor itself is tested on real pipes (``executor/test_remote_executor.py``); here its
channel is a stub, because only the table's bookkeeping is under test.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon import xrun
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import manager
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import messages as msgs


class Channel:
    def __init__(self) -> None:
        self.closed = False

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        raise TimeoutError

    def write(self, data: bytes) -> None:
        pass

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


def test_two_first_runs_at_once_start_one_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: List[Started] = []
    entered, release = threading.Event(), threading.Event()

    def start(pt: Any, req: msgs.XRun) -> Started:
        starts.append(Started())
        if len(starts) == 1:
            entered.set()
            release.wait(10)
        return starts[-1]

    monkeypatch.setattr(xrun, "_start", start)
    pt = Transport()
    got: List[Tuple[Optional[manager.Executor], str]] = []
    first = threading.Thread(target=lambda: got.append(xrun._executor(pt, request())))  # type: ignore[arg-type]
    second = threading.Thread(target=lambda: got.append(xrun._executor(pt, request())))  # type: ignore[arg-type]
    first.start()
    assert entered.wait(10)
    second.start()
    second.join(0.5)  # room for the second to start an executor of its own, were it not held back
    release.set()
    first.join(10)
    second.join(10)
    assert len(starts) == 1
    assert [executor for executor, _why in got] == [starts[0], starts[0]]


class _Later:
    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def test_executors_idle_past_their_timeout_are_closed_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    made = iter([Started(), Started()])
    monkeypatch.setattr(xrun, "_start", lambda pt, req: next(made))
    idle, kept = Transport(), Transport()
    short, forever = xrun._executor(idle, request(idle=30.0))[0], xrun._executor(kept, request(idle=0.0))[0]  # type: ignore[arg-type]
    assert short is not None and forever is not None
    assert xrun.expire_idle_executors() == 0  # just taken
    monkeypatch.setattr(manager, "time", _Later(31.0))
    assert xrun.expire_idle_executors() == 1
    assert not short.alive and short.channel.closed  # type: ignore[attr-defined]
    assert forever.alive
    assert xrun._known(idle) == {} and xrun._known(kept) == {"k": forever}  # type: ignore[arg-type]
