# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The daemon's side of a remote executor: start it over a channel, send runs, demultiplex replies.

No Ansible import and no Paramiko import: the channel is anything with ``read``/``write``/``close``
(a Paramiko session channel in the daemon, a pair of pipes in the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import shlex
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Protocol, Set, Tuple, Union

from . import remote


def executor_source() -> bytes:
    """What runs on the host, one source: ``remote_child.py``, then ``remote.py`` without its own imports of it."""
    here = Path(__file__).parent
    parent = [
        line
        for line in (here / "remote.py").read_bytes().splitlines(True)
        if not line.startswith((b"from __future__ ", b"from .remote_child "))
    ]
    return (here / "remote_child.py").read_bytes() + b"".join(parent)


SOURCE = executor_source()


class ChannelLike(Protocol):
    """What the manager needs of a channel: blocking reads (``b""`` at the end), writes, close."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, blocking; ``b""`` at the end."""

    def write(self, data: bytes) -> None:
        """All of ``data``."""

    def close(self) -> None:
        """Close the channel."""


class EventKind(Enum):
    OUT = "out"
    ERR = "err"
    EXIT = "exit"


Event = Tuple[EventKind, Union[bytes, int]]


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


def bootstrap(interpreter: str) -> str:
    """The shell words that start the executor: read its source (exact length) from stdin, run it.

    The same words work under every become method: they go where the module's interpreter would.
    """
    size = len(SOURCE)
    loader = (
        "import os,sys;b=b'';"
        f'exec("while len(b)<{size}:\\n c=os.read(0,{size}-len(b))\\n if not c:sys.exit(3)\\n b+=c");'
        "del os,sys;exec(compile(b,'<pooled_ssh executor>','exec'))"
    )
    return f"{shlex.quote(interpreter)} -c {shlex.quote(loader)}"


def zip_hash(zip_text: bytes) -> bytes:
    return hashlib.sha256(zip_text).digest()


@dataclass
class ExecutorStats:
    runs: int = 0
    #: Runs whose payload the executor already held (only the hash crossed the wire).
    cache_hits: int = 0
    puts: int = 0


@dataclass
class _Pending:
    events: queue.Queue[Tuple[int, bytes]] = field(default_factory=queue.Queue)


class Executor:
    """One executor on one channel. ``start`` once; ``run`` from any thread; dead once ``alive`` is False."""

    def __init__(self, channel: ChannelLike, tmp: str = "~/.ansible/tmp") -> None:
        self.channel = channel
        self.tmp = tmp
        self.hello: Dict[str, object] = {}
        self.stats = ExecutorStats()
        self._held: Set[bytes] = set()
        self._pending: Dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._next = 1
        self._alive = False
        self._why = ""
        self._reader: Optional[threading.Thread] = None

    @property
    def alive(self) -> bool:
        return self._alive

    def close_if_idle(self) -> bool:
        """Close the executor when no run is in progress (its channel holds one of the server's
        sessions, wanted back); False when a run is going on."""
        with self._lock:
            if self._pending or not self._alive:
                return False
            self._alive = False
        self.close()
        return True

    # -- wire --

    def _write(self, kind: int, rid: int, body: bytes = b"") -> None:
        with self._write_lock:
            self.channel.write(remote.HEADER.pack(len(body), kind, rid) + body)

    def _read_exact(self, size: int) -> bytes:
        chunks = []
        while size:
            data = self.channel.read(min(size, 1024 * 1024))
            if not data:
                raise EOFError
            chunks.append(data)
            size -= len(data)
        return b"".join(chunks)

    def _read_frame(self) -> Tuple[int, int, bytes]:
        size, kind, rid = remote.HEADER.unpack(self._read_exact(remote.HEADER.size))
        if size > remote.MAX_FRAME:
            raise ValueError(f"executor frame of {size} bytes is over the limit")
        return kind, rid, self._read_exact(size)

    # -- life --

    def start(self) -> Dict[str, object]:
        """Send the source and the init frame (the channel already runs :func:`bootstrap`); wait for hello."""
        try:
            self.channel.write(SOURCE)
            self._write(remote.K_INIT, 0, json.dumps({"version": remote.VERSION, "tmp": self.tmp}).encode())
            kind, _rid, body = self._read_frame()
        except (EOFError, OSError, ValueError) as e:
            self.close()
            raise ExecutorError(f"the executor did not start ({type(e).__name__})", started=False) from None
        hello = json.loads(body) if kind == remote.K_HELLO else {"error": "no hello"}
        if "error" in hello:
            self.close()
            raise ExecutorError(f"the executor refused to start: {hello['error']}", started=False)
        self.hello = hello
        self._alive = True
        self._reader = threading.Thread(target=self._read_loop, name="executor-reader", daemon=True)
        self._reader.start()
        return hello

    def close(self) -> None:
        self._alive = False
        with contextlib.suppress(OSError):
            self.channel.close()

    def _read_loop(self) -> None:
        try:
            while True:
                kind, rid, body = self._read_frame()
                with self._lock:
                    pending = self._pending.get(rid)
                if pending is not None:
                    pending.events.put((kind, body))
        except (EOFError, OSError, ValueError) as e:
            self._why = type(e).__name__
        finally:
            self._alive = False
            with self._lock:
                lost = list(self._pending.values())
            for pending in lost:
                pending.events.put((0, b""))

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
        with self._lock:
            if not self._alive:
                raise ExecutorError("the executor is not running", started=False)
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
                try:
                    kind, body = pending.events.get(timeout=wait)
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        finished = True
                        raise ExecutorTimeout(timeout or 0.0, self._cancel(rid, pending)) from None
                    if abandoned is not None and abandoned():
                        finished = True
                        self._cancel(rid, pending, grace=0.0)
                        raise ExecutorAbandoned() from None
                    continue
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
            try:
                kind, _body = pending.events.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return False
            if kind in (remote.K_EXIT, remote.K_FAIL):
                return True
            if kind not in (remote.K_OUT, remote.K_ERR, remote.K_NEED):
                return False  # the executor was lost
        return False

    def _put(self, digest: bytes, zip_text: bytes) -> None:
        self._write(remote.K_PUT, 0, digest + zip_text)
        self._held.add(digest)
        self.stats.puts += 1
