# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The daemon's side of a remote executor: start it over a channel, send runs, demultiplex replies.

No Ansible import and no Paramiko import: the channel is anything with ``read``/``write``/``close``
(a Paramiko session channel in the daemon, a pair of pipes in the tests).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Deque, Dict, Iterator, Optional, Protocol, Set, Tuple, Union

from . import remote
from .source import executor_source

SOURCE = executor_source()


class ChannelLike(Protocol):
    """What the manager needs of a channel: reads bounded in time, writes, close, and whether it ended."""

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        """Up to ``size`` bytes as soon as some arrived; ``b""`` at the end; ``TimeoutError`` when
        ``timeout`` seconds (None: no limit) passed with nothing."""

    def write(self, data: bytes) -> None:
        """Write all of ``data``."""

    def close(self) -> None:
        """Close the channel."""

    def ended(self) -> bool:
        """Whether the other side closed it (the executor exited), read without waiting."""


class EventKind(Enum):
    OUT = "out"
    ERR = "err"
    EXIT = "exit"


Event = Tuple[EventKind, Union[bytes, int]]
#: (zip text, its SHA-256, the executor's hello) -> the host's magic and the marshalled code, or None.
Compile = Callable[[bytes, bytes, Dict[str, object]], Optional[bytes]]


class ExecutorError(Exception):
    """The executor could not be used; ``started`` says whether a run may have begun on the host."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started


#: How long a cancelled run's exit status may take to come back: it says the kill happened on the host.
CANCEL_GRACE = 2.0
#: How often a waiting run asks whether its caller is still there.
POLL = 0.5


class ExecutorTimeout(ExecutorError):
    """The run did not finish within its time limit; ``killed``: the executor confirmed it killed it."""

    def __init__(self, seconds: float, killed: bool) -> None:
        super().__init__(f"the module did not finish within {seconds:g}s", started=True)
        self.seconds = seconds
        self.killed = killed


class ExecutorAbandoned(ExecutorError):
    """The caller went away while the run went on: the run was cancelled (its process group killed)."""

    def __init__(self) -> None:
        super().__init__("the caller went away mid-run", started=True)


def zip_hash(zip_text: bytes) -> bytes:
    return hashlib.sha256(zip_text).digest()


@dataclass
class ExecutorStats:
    runs: int = 0
    #: Runs whose payload the executor already held (only the hash crossed the wire).
    cache_hits: int = 0
    puts: int = 0
    #: Payloads sent with their sources' code compiled on the controller (bytecode.py).
    compiled_here: int = 0


@dataclass
class _Pending:
    events: Deque[Tuple[int, bytes]] = field(default_factory=collections.deque)


class Executor:
    """One executor on one channel. ``start`` once; ``run`` from any thread; dead once ``alive`` is False.

    No thread of its own: the runs waiting for events take turns at reading the channel (one reads
    and hands each frame to the run it names, the others wait for it), so a thousand pooled
    transports with an executor each cost the daemon no thread beyond Paramiko's own. Between runs
    nothing reads; whether the executor went away meanwhile is the channel's ``ended``.
    """

    def __init__(self, channel: ChannelLike, tmp: str = "~/.ansible/tmp", compiler: Optional[Compile] = None) -> None:
        self.channel = channel
        self.tmp = tmp
        #: Code compiled on the controller for this host's bytecode, sent with each new payload.
        self.compiler = compiler
        self.hello: Dict[str, object] = {}
        self.stats = ExecutorStats()
        self._held: Set[bytes] = set()
        self._pending: Dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._reading = False
        self._buffer = bytearray()
        self._write_lock = threading.Lock()
        self._next = 1
        self._alive = False
        self._begun = False
        self._why = ""
        #: Seconds without a run after which :meth:`close_if_idle` may close it (0: never).
        self.idle_timeout = 0.0
        self._last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        if self._alive and self.channel.ended():
            self._lost("closed")
        return self._alive

    def take(self, idle_timeout: float) -> bool:
        """Claim the executor for a run about to start (so that it is not closed as idle meanwhile),
        with the idle time after which it may be closed (0: never); False when it is gone."""
        if not self.alive:
            return False
        with self._lock:
            self.idle_timeout = idle_timeout
            self._last_used = time.monotonic()
            return self._alive

    def close_if_idle(self, expired_only: bool = False) -> bool:
        """Close the executor when no run is in progress (and, ``expired_only``, none ended in its
        last ``idle_timeout`` seconds); False when it is in use, or kept."""
        with self._lock:
            if self._pending or not self._alive:
                return False
            if expired_only and not (self.idle_timeout and time.monotonic() - self._last_used >= self.idle_timeout):
                return False
            self._alive = False
        self.close()
        return True

    # -- wire --

    def _write(self, kind: int, rid: int, body: bytes = b"") -> None:
        with self._write_lock:
            self.channel.write(remote.HEADER.pack(len(body), kind, rid) + body)

    def _frame(self) -> Optional[Tuple[int, int, bytes]]:
        """The next whole frame in the buffer, taken out of it; None when it holds none yet."""
        if len(self._buffer) < remote.HEADER.size:
            return None
        size, kind, rid = remote.HEADER.unpack_from(self._buffer)
        if size > remote.MAX_FRAME:
            raise ValueError(f"executor frame of {size} bytes is over the limit")
        end = remote.HEADER.size + size
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[remote.HEADER.size : end])
        del self._buffer[:end]
        return kind, rid, body

    def _fill(self, timeout: Optional[float]) -> None:
        """Read what the channel has (waiting at most ``timeout``) into the buffer."""
        data = self.channel.read(1024 * 1024, timeout)
        if not data:
            raise EOFError
        self._buffer += data

    def _lost(self, why: str) -> None:
        """The executor is gone: every waiting run learns it (an event of kind 0)."""
        with self._turn:
            self._alive = False
            self._why = self._why or why
            for pending in self._pending.values():
                pending.events.append((0, b""))
            self._turn.notify_all()

    def _next_event(self, pending: _Pending, wait: Optional[float]) -> Optional[Tuple[int, bytes]]:
        """The run's next event, or None once ``wait`` seconds (None: no limit) passed without one."""
        end = None if wait is None else time.monotonic() + wait
        while True:
            with self._turn:
                while True:
                    if pending.events:
                        return pending.events.popleft()
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    if not self._reading:
                        self._reading = True  # our turn to read, for everyone
                        break
                    self._turn.wait(left)
            try:
                self._read_some(left)
            finally:
                with self._turn:
                    self._reading = False
                    self._turn.notify_all()

    def _read_some(self, timeout: Optional[float]) -> None:
        """One read of the channel, each whole frame in it handed to the run it names (frames of
        runs no longer waiting, such as a cancelled one's last output, are dropped)."""
        try:
            self._fill(timeout)
            frames = []
            frame = self._frame()
            while frame is not None:
                frames.append(frame)
                frame = self._frame()
        except TimeoutError:
            return
        except (EOFError, OSError, ValueError) as e:
            self._lost(type(e).__name__)
            return
        with self._turn:
            for kind, rid, body in frames:
                waiting = self._pending.get(rid)
                if waiting is not None:
                    waiting.events.append((kind, body))

    # -- life --

    def begin(self) -> None:
        """Send the source and the init frame (the channel already runs :func:`.source.bootstrap`, or
        its exec request is on its way: the server holds input that comes before the command starts)."""
        try:
            self.channel.write(SOURCE)
            self._write(remote.K_INIT, 0, json.dumps({"version": remote.VERSION, "tmp": self.tmp}).encode())
        except OSError as e:
            self.close()
            raise ExecutorError(f"the executor did not start ({type(e).__name__})", started=False) from None
        self._begun = True

    def start(self, timeout: Optional[float] = None) -> Dict[str, object]:
        """:meth:`begin` unless done; wait for hello, at most ``timeout`` seconds for each read."""
        if not self._begun:
            self.begin()
        try:
            frame = self._frame()
            while frame is None:
                self._fill(timeout)
                frame = self._frame()
        except (EOFError, OSError, ValueError) as e:
            self.close()
            raise ExecutorError(f"the executor did not start ({type(e).__name__})", started=False) from None
        kind, _rid, body = frame
        hello = json.loads(body) if kind == remote.K_HELLO else {"error": "no hello"}
        if "error" in hello:
            self.close()
            raise ExecutorError(f"the executor refused to start: {hello['error']}", started=False)
        self.hello = hello
        self._alive = True
        return hello

    def close(self) -> None:
        self._alive = False
        with contextlib.suppress(OSError):
            self.channel.close()

    # -- runs --

    def run(
        self,
        head: bytes,
        zip_text: bytes,
        tail: bytes,
        env: Dict[str, str],
        timeout: Optional[float] = None,
        abandoned: Optional[Callable[[], bool]] = None,
    ) -> Iterator[Event]:
        """Run the wrapper ``head + zip_text + tail`` in a fresh child; yield its output then its exit status.

        Raises :class:`ExecutorError`: ``started=False`` when nothing ran (the caller may take the
        plain path), ``started=True`` when the outcome is unknown (never run it again);
        :class:`ExecutorTimeout` when ``timeout`` seconds (None: no limit) passed before the exit
        status: the run is cancelled, which kills the child's process group, and the executor stays;
        :class:`ExecutorAbandoned` (after cancelling) as soon as ``abandoned()`` says the caller is gone.
        """
        digest = zip_hash(zip_text)
        if not self.alive:
            raise ExecutorError("the executor is not running", started=False)
        with self._lock:
            rid = self._next
            self._next += 1
            pending = self._pending[rid] = _Pending()
        request = json.dumps(
            {"zip": digest.hex(), "head": head.decode("latin-1"), "tail": tail.decode("latin-1"), "env": env}
        ).encode()
        sent = False
        finished = False
        try:
            hit = digest in self._held
            try:
                if not hit:
                    self._put(digest, zip_text)
                self._write(remote.K_RUN, rid, request)
                sent = True
            except OSError:
                raise ExecutorError("the executor's channel closed before the run was sent", started=False) from None
            self.stats.runs += 1
            self.stats.cache_hits += hit
            deadline = None if not timeout else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if abandoned is not None:
                    wait = POLL if wait is None else min(wait, POLL)
                event = self._next_event(pending, wait)
                if event is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        finished = True
                        raise ExecutorTimeout(timeout or 0.0, self._cancel(rid, pending)) from None
                    if abandoned is not None and abandoned():
                        finished = True
                        self._cancel(rid, pending, grace=0.0)
                        raise ExecutorAbandoned() from None
                    continue
                kind, body = event
                if kind == remote.K_OUT:
                    yield EventKind.OUT, body
                elif kind == remote.K_ERR:
                    yield EventKind.ERR, body
                elif kind == remote.K_EXIT:
                    finished = True
                    yield EventKind.EXIT, int(json.loads(body)["rc"])
                    return
                elif kind == remote.K_NEED:
                    # The executor let the payload go (or never had it): nothing started yet.
                    self.stats.cache_hits -= hit
                    hit = False
                    self._put(digest, zip_text)
                    self._write(remote.K_RUN, rid, request)
                elif kind == remote.K_FAIL:
                    finished = True
                    info = json.loads(body)
                    raise ExecutorError(f"executor: {info.get('message')}", started=bool(info.get("started")))
                else:
                    finished = True
                    raise ExecutorError(
                        f"the executor was lost while the module ran ({self._why or 'closed'})", started=True
                    )
        finally:
            with self._lock:
                self._pending.pop(rid, None)
                self._last_used = time.monotonic()
            if sent and not finished and self._alive:
                with contextlib.suppress(OSError):
                    self._write(remote.K_CANCEL, rid)

    def _cancel(self, rid: int, pending: _Pending, grace: float = CANCEL_GRACE) -> bool:
        """Have the executor kill run ``rid``; whether its end was confirmed within ``grace`` seconds."""
        try:
            self._write(remote.K_CANCEL, rid)
        except OSError:
            return False
        end = time.monotonic() + grace
        while grace:
            event = self._next_event(pending, max(0.0, end - time.monotonic()))
            if event is None:
                return False
            kind = event[0]
            if kind in (remote.K_EXIT, remote.K_FAIL):
                return True
            if kind not in (remote.K_OUT, remote.K_ERR, remote.K_NEED):
                return False  # the executor was lost
        return False

    def _put(self, digest: bytes, zip_text: bytes) -> None:
        codes = None
        if self.compiler is not None:
            try:
                codes = self.compiler(zip_text, digest, self.hello)
            except Exception:  # only a speed-up: the host compiles, as without it
                codes = None
        if codes and len(codes) + len(digest) <= remote.MAX_FRAME:
            self._write(remote.K_CODE, 0, codes[:4] + digest + codes[4:])
            self.stats.compiled_here += 1
        self._write(remote.K_PUT, 0, digest + zip_text)
        self._held.add(digest)
        self.stats.puts += 1
