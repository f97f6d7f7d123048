"""Fault injection on loopback: a TCP proxy that can delay, stall, reset, cut, refuse and
swallow the server's replies to one request, and a tarpit that accepts connections and never speaks.

The pool's hardest failures are network ones (a silent peer, a reset, a slow link) and they
must be reproduced deterministically with real sockets. Everything runs in one selector thread
per proxy with non-blocking sockets, so ~50 connections and ~100 MiB transfers go through at
loopback speed; latency is added with timestamped per-direction queues (order and throughput
preserved), never by sleeping in the reader. Control calls (stall, reset_all, cut, ...) are
executed by the proxy thread itself and return once they took effect.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

CHUNK = 256 * 1024
HIGH_WATER = 4 * 1024 * 1024  # bytes queued per direction before we stop reading its source
CUT_DRAIN_SECONDS = 5.0
CONTROL_TIMEOUT = 10.0

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def _rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets a RST (ConnectionResetError), not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Direction:
    """One way of a connection: bytes read from ``src`` are written to ``dst``."""

    __slots__ = ("dst", "eof", "last_release", "outbuf", "pending", "pending_bytes", "shut", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.pending: Deque[Tuple[float, bytes]] = collections.deque()  # delayed chunks
        self.pending_bytes = 0
        self.last_release = 0.0
        self.outbuf = bytearray()  # ready to send now
        self.eof = False  # src sent FIN
        self.shut = False  # FIN forwarded to dst

    @property
    def queued(self) -> int:
        return self.pending_bytes + len(self.outbuf)


class _Conn:
    """A client connection and its upstream connection to the target."""

    __slots__ = ("c2u", "client", "connecting", "cut_deadline", "u2c", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.cut_deadline: Optional[float] = None
        self.c2u = _Direction(client, upstream)
        self.u2c = _Direction(upstream, client)

    def sockets(self) -> Tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class ReplyDrop:
    """A one-shot fault armed by :meth:`FaultProxy.drop_replies_after`.

    It triggers on the first read of client bytes (client to server) of at least ``min_bytes``
    once ``when()`` holds: those bytes are forwarded, and from then on whatever the server sends
    on that connection is read and thrown away, so the client never sees an answer to them.
    The test then ends the connection with :meth:`FaultProxy.reset_all` (a RST both ways).

    SSH is encrypted, so the proxy cannot see which message a read carries: it sees reads. On
    loopback one SSH packet that a client writes with one ``send`` arrives in one read, and
    control messages (channel open/close, window adjust, a keepalive) are under 200 bytes, so a
    threshold of a few KiB picks out the one packet the test made large on purpose (a command
    padded with a comment or an environment variable); a pty request, a channel open and
    their replies go through untouched before it. ``when`` excludes earlier large reads (a file
    transfer before the command). What was caught is in :attr:`caught` (its size).
    """

    def __init__(self, min_bytes: int, when: Optional[Callable[[], bool]]) -> None:
        self.min_bytes = min_bytes
        self.when = when
        self.triggered = threading.Event()
        self.caught = 0
        self.dropped = 0  # server bytes thrown away
        self.conn: Optional[_Conn] = None


class FaultProxy:
    """TCP proxy from ``listen_addr:port`` to ``target`` with injectable faults.

    >>> with FaultProxy(("127.0.0.2", 2222)) as proxy:
    ...     proxy.set_latency(100)      # 100 ms round trip added
    ...     proxy.stall(); proxy.resume()
    """

    def __init__(self, target: Tuple[str, int], listen_addr: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target[0], int(target[1]))
        self.address = listen_addr
        self._delay = 0.0  # one-way, seconds
        self._stalled = False
        self._refusing = False
        self._conns: Dict[socket.socket, _Conn] = {}  # both sockets of a conn map to it
        self._all: Set[_Conn] = set()
        self._timed: Set[_Direction] = set()  # directions with delayed chunks
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._commands: queue.Queue[Tuple[Callable[[], object], threading.Event, List[object]]] = queue.Queue()
        self._listener: Optional[socket.socket] = self._listen(port)
        self.port: int = int(self._listener.getsockname()[1])
        self.bytes_forwarded = 0
        self.accepted = 0
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._reply_drop: Optional[ReplyDrop] = None

    # ----------------------------------------------------------------- public control

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        """Start the proxy thread (idempotent)."""
        if self._thread is None:
            self._running = True
            self._sel.register(self._wake_r, _READ, None)
            if self._listener is not None:
                self._sel.register(self._listener, _READ, None)
            self._thread = threading.Thread(target=self._loop, name=f"FaultProxy:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close every socket (connections get a RST)."""
        if self._thread is not None:
            self._running = False
            self._wake()
            self._thread.join(CONTROL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("FaultProxy thread did not stop")
            self._thread = None
        for conn in list(self._all):
            for sock in conn.sockets():
                _rst_close(sock)
        self._all.clear()
        self._conns.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(Exception):
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._error is not None:
            raise RuntimeError(f"FaultProxy thread failed: {self._error!r}") from self._error

    def set_latency(self, rtt_ms: float) -> None:
        """Add ``rtt_ms`` to every round trip (rtt/2 each way) for data read from now on."""
        self._call(lambda: setattr(self, "_delay", max(0.0, rtt_ms) / 2000.0))

    def stall(self) -> None:
        """Stop forwarding in both directions; sockets stay open (a silent peer)."""
        self._call(lambda: setattr(self, "_stalled", True))

    def resume(self) -> None:
        """Forward again, starting with whatever was held during the stall."""

        def do() -> None:
            self._stalled = False
            for conn in list(self._all):
                self._update(conn)

        self._call(do)

    def reset_all(self) -> int:
        """Close every connection with a RST on both sides; returns how many."""

        def do() -> int:
            conns = list(self._all)
            for conn in conns:
                self._drop(conn, rst=True)
            return len(conns)

        return int(self._call(do))  # type: ignore[arg-type]

    def cut(self) -> int:
        """Close every current connection cleanly (FIN both ways, buffered data dropped)."""

        def do() -> int:
            count = 0
            for conn in list(self._all):
                if conn.cut_deadline is not None:
                    continue
                count += 1
                if conn.connecting:
                    self._drop(conn, rst=False)
                    continue
                conn.cut_deadline = time.monotonic() + CUT_DRAIN_SECONDS
                for d in (conn.c2u, conn.u2c):
                    d.pending.clear()
                    d.pending_bytes = 0
                    d.outbuf.clear()
                    self._timed.discard(d)
                    if not d.shut:
                        with contextlib.suppress(OSError):
                            d.dst.shutdown(socket.SHUT_WR)
                        d.shut = True
                self._update(conn)
            return count

        return int(self._call(do))  # type: ignore[arg-type]

    def drop_replies_after(self, min_bytes: int, when: Optional[Callable[[], bool]] = None) -> ReplyDrop:
        """Arm a :class:`ReplyDrop`: the next client read of ``min_bytes`` or more (once ``when()``
        holds; ``when`` runs on the proxy thread) reaches the server, its answers never come back.
        Arming again replaces an earlier fault that has not triggered."""
        fault = ReplyDrop(min_bytes, when)

        def do() -> None:
            self._reply_drop = fault

        self._call(do)
        return fault

    def refuse_new(self, refuse: bool = True) -> None:
        """Refuse new connections (the port is closed: ECONNREFUSED) or accept them again."""

        def do() -> None:
            self._refusing = refuse
            if refuse and self._listener is not None:
                self._sel.unregister(self._listener)
                self._listener.close()
                self._listener = None
            elif not refuse and self._listener is None:
                self._listener = self._listen(self.port)
                self._sel.register(self._listener, _READ, None)

        self._call(do)

    @property
    def connections(self) -> int:
        """Connections currently forwarded (or stalled); cut ones not counted."""
        return sum(1 for c in list(self._all) if c.cut_deadline is None)

    @property
    def stalled(self) -> bool:
        return self._stalled

    # ----------------------------------------------------------------- internals

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, port))
        sock.listen(256)
        sock.setblocking(False)
        return sock

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the proxy thread and wait for it (or run it here if not started)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        box: List[object] = []
        self._commands.put((fn, done, box))
        self._wake()
        if not done.wait(CONTROL_TIMEOUT):
            raise RuntimeError(f"FaultProxy control call timed out (thread error: {self._error!r})")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _loop(self) -> None:
        try:
            while self._running:
                timeout = self._next_timeout()
                for key, events in self._sel.select(timeout):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_r.recv(4096)
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = self._conns.get(sock)  # type: ignore[arg-type]
                        if conn is not None:
                            self._service(conn, sock, events)  # type: ignore[arg-type]
                self._run_commands()
                self._release_due()
                self._expire_cuts()
        except BaseException as exc:  # surfaced by stop() and control calls
            self._error = exc
            self._run_commands()
            raise

    def _run_commands(self) -> None:
        while True:
            try:
                fn, done, box = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                box.append(fn())
            except Exception as exc:
                box.append(exc)
            done.set()

    def _next_timeout(self) -> Optional[float]:
        deadlines = []
        if self._timed and not self._stalled:
            deadlines.append(min(d.pending[0][0] for d in self._timed))
        deadlines.extend(c.cut_deadline for c in self._all if c.cut_deadline is not None)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _accept(self) -> None:
        assert self._listener is not None
        for _round in range(64):  # bounded per wake-up
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = upstream.connect_ex(self.target)
            conn = _Conn(client, upstream)
            self._conns[client] = conn
            self._conns[upstream] = conn
            self._all.add(conn)
            if err not in (0, errno.EINPROGRESS):
                self._drop(conn, rst=True)
                continue
            self._update(conn)

    def _desired(self, conn: _Conn, sock: socket.socket) -> int:
        if conn.cut_deadline is not None:
            # Cut: only drain (and discard) until the peer closes.
            d = conn.c2u if sock is conn.client else conn.u2c
            return 0 if d.eof else _READ
        if conn.connecting:
            return _WRITE if sock is conn.upstream else 0
        if self._stalled:
            return 0
        events = 0
        out_dir = conn.c2u if sock is conn.client else conn.u2c  # sock is its source
        in_dir = conn.u2c if sock is conn.client else conn.c2u  # sock is its destination
        if not out_dir.eof and out_dir.queued < HIGH_WATER:
            events |= _READ
        if in_dir.outbuf and not in_dir.shut:
            events |= _WRITE
        return events

    def _update(self, conn: _Conn) -> None:
        if conn not in self._all:
            return
        for sock in conn.sockets():
            want = self._desired(conn, sock)
            try:
                current = self._sel.get_key(sock).events
            except KeyError:
                current = 0
            if want == current:
                continue
            if current == 0:
                self._sel.register(sock, want, None)
            elif want == 0:
                self._sel.unregister(sock)
            else:
                self._sel.modify(sock, want, None)

    def _drop(self, conn: _Conn, rst: bool) -> None:
        if conn not in self._all:
            return
        self._all.discard(conn)
        for d in (conn.c2u, conn.u2c):
            self._timed.discard(d)
        for sock in conn.sockets():
            self._conns.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if rst:
                _rst_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()

    def _service(self, conn: _Conn, sock: socket.socket, events: int) -> None:
        try:
            if conn.connecting:
                err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._drop(conn, rst=True)
                    return
                conn.connecting = False
            elif conn.cut_deadline is not None:
                d = conn.c2u if sock is conn.client else conn.u2c
                if not conn.c2u.eof or not conn.u2c.eof:
                    data = sock.recv(CHUNK)
                    if not data:
                        d.eof = True
                if conn.c2u.eof and conn.u2c.eof:
                    self._drop(conn, rst=False)
                    return
            else:
                src_dir = conn.c2u if sock is conn.client else conn.u2c
                dst_dir = conn.u2c if sock is conn.client else conn.c2u
                if events & _WRITE and not self._stalled:
                    self._flush(dst_dir)
                if events & _READ and not self._stalled:
                    self._read(src_dir)
                if conn.c2u.shut and conn.u2c.shut:
                    self._drop(conn, rst=False)
                    return
        except (ConnectionError, OSError):
            # A reset (or any socket error) on one side is propagated as a reset on the other.
            self._drop(conn, rst=True)
            return
        self._update(conn)

    def _read(self, d: _Direction) -> None:
        try:
            data = d.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            d.eof = True
            self._maybe_shut(d)
            return
        fault = self._reply_drop
        if fault is not None:
            conn = self._conns.get(d.src)
            if (
                fault.conn is None
                and conn is not None
                and d is conn.c2u
                and len(data) >= fault.min_bytes
                and (fault.when is None or fault.when())
            ):
                fault.conn, fault.caught = conn, len(data)
                self._drop_replies(conn)
                fault.triggered.set()
            elif fault.conn is not None and conn is fault.conn and d is conn.u2c:
                fault.dropped += len(data)
                return
        if self._delay > 0 or d.pending:
            release = max(time.monotonic() + self._delay, d.last_release)
            d.last_release = release
            d.pending.append((release, data))
            d.pending_bytes += len(data)
            self._timed.add(d)
        else:
            d.outbuf += data
            self._flush(d)

    def _drop_replies(self, conn: _Conn) -> None:
        """Forget server bytes not yet delivered to the client (latency queues included)."""
        d = conn.u2c
        d.pending.clear()
        d.pending_bytes = 0
        d.outbuf.clear()
        self._timed.discard(d)

    def _flush(self, d: _Direction) -> None:
        while d.outbuf:
            try:
                sent = d.dst.send(d.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            self.bytes_forwarded += sent
            del d.outbuf[:sent]
        self._maybe_shut(d)

    def _maybe_shut(self, d: _Direction) -> None:
        if d.eof and not d.shut and not d.outbuf and not d.pending:
            d.shut = True
            with contextlib.suppress(OSError):
                d.dst.shutdown(socket.SHUT_WR)

    def _release_due(self) -> None:
        if not self._timed or self._stalled:
            return
        now = time.monotonic()
        for d in list(self._timed):
            while d.pending and d.pending[0][0] <= now:
                _unused, data = d.pending.popleft()
                d.pending_bytes -= len(data)
                d.outbuf += data
            if not d.pending:
                self._timed.discard(d)
            conn = self._conns.get(d.src)
            if conn is None:
                continue
            try:
                self._flush(d)
            except (ConnectionError, OSError):
                self._drop(conn, rst=True)
                continue
            if conn.c2u.shut and conn.u2c.shut:
                self._drop(conn, rst=False)
            else:
                self._update(conn)

    def _expire_cuts(self) -> None:
        now = time.monotonic()
        for conn in list(self._all):
            if conn.cut_deadline is not None and conn.cut_deadline <= now:
                self._drop(conn, rst=False)


class Tarpit:
    """Accepts TCP connections and never sends a byte (banner-timeout tests).

    Incoming data is read and discarded so that clients never block on a full buffer.
    """

    def __init__(self, listen_addr: str = "127.0.0.1", port: int = 0) -> None:
        self.address = listen_addr
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_addr, port))
        self._listener.listen(256)
        self._listener.setblocking(False)
        self.port: int = int(self._listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._socks: Set[socket.socket] = set()
        self.accepted = 0
        self._running = False
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> Tarpit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """Connections currently held open."""
        return len(self._socks)

    def start(self) -> Tarpit:
        if self._thread is None:
            self._running = True
            self._sel.register(self._listener, _READ)
            self._sel.register(self._wake_r, _READ)
            self._thread = threading.Thread(target=self._loop, name=f"Tarpit:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread is not None:
            self._running = False
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._thread.join(CONTROL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("Tarpit thread did not stop")
            self._thread = None
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.close()
        self._socks.clear()
        self._listener.close()
        with contextlib.suppress(Exception):
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        while self._running:
            for key, _unused in self._sel.select(None):
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                if sock is self._listener:
                    for _round in range(64):
                        try:
                            client, _addr = self._listener.accept()
                        except OSError:
                            break
                        client.setblocking(False)
                        self.accepted += 1
                        self._socks.add(client)
                        self._sel.register(client, _READ)
                    continue
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(sock)
                    self._socks.discard(sock)
                    sock.close()
