# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One worker's conversation with the daemon: hello, bind, then requests dispatched by op id.

Whatever a (same-uid) client sends, the daemon answers with an error frame or drops that
client; it never dies, and one client never blocks another (a thread each, a deadline for
the hello, bounded frames). Frames of a finished (or unknown) operation are dropped, never
read as requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from ..errors import ErrorKind, PoolError
from ..pool.entries import Lease, Reservation
from ..pool.settings import PoolKey, PoolSettings
from ..ssh.connect import Target
from ..ssh.transport import PooledTransport
from ..wire import frames, parts
from ..wire import messages as msgs
from ..wire.fields import Malformed
from ..wire.spec import ConnectionSpec
from . import admin
from .exec import run_exec
from .transfer import transfer
from .xrun import run_xrun

if TYPE_CHECKING:
    from .server import Daemon

log = logging.getLogger("pooled_ssh.daemon")

#: How long a connected worker may stay silent between requests before we drop it (a worker
#: finds its connection closed before its next request and opens another).
CLIENT_IDLE = 120.0
#: How long a new client has to say hello, all of it: one that connects and stalls (or sends a
#: byte now and then) is dropped after this.
HELLO_TIMEOUT = 10.0
#: Once a frame's first bytes arrived, the rest must arrive within this.
FRAME_TIMEOUT = 30.0
#: After an error reply to a broken frame, read (and drop) at most this much of what the client
#: still sends, for at most DRAIN_SECONDS: closing a socket with unread input resets it, and
#: the client would lose the error reply that says what was wrong.
DRAIN_BYTES = frames.MAX_JSON + frames.MAX_PAYLOAD
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class Binding:
    """A worker connection's spec and settings, checked and fingerprinted once, at ``bind``."""

    spec: ConnectionSpec
    settings: PoolSettings
    key: PoolKey
    daemon: Daemon

    def lease(self) -> Lease[PooledTransport]:
        return self.daemon.pool.acquire(self.key, self.settings, Target(self.spec, self.settings))

    def open_warm(self, reservation: Reservation[PooledTransport]) -> None:
        """Open the transport a warm request reserved (:mod:`.warm`), leaving it idle in the pool."""
        self.daemon.pool.open_reserved(reservation, self.settings, Target(self.spec, self.settings))


def _drain_before_close(conn: socket.socket) -> None:
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(DRAIN_SECONDS)
    deadline = time.monotonic() + DRAIN_SECONDS
    left = DRAIN_BYTES
    while left > 0 and time.monotonic() < deadline:
        chunk = conn.recv(min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)


class Session:
    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.binding: Optional[Binding] = None

    def send(self, message: Dict[str, Any], payload: bytes = b"") -> None:
        """Send a reply; one that grows with the pool goes in parts when it does not fit a frame.

        A reply that cannot be sent at all (one item alone past the limit) becomes an error for its
        request, raised before a byte of it was sent, so the conversation goes on."""
        growing = msgs.GROWING.get(str(message.get("t")))
        try:
            for part in parts.split(message, growing) if growing and not payload else [message]:
                frames.send_frame(self.sock, part, payload)
        except (parts.TooLarge, frames.MessageTooLarge) as e:
            raise PoolError(
                f"the pool daemon's {message.get('t')} reply is too large to send ({e})", kind=ErrorKind.TOO_LARGE
            ) from None

    def bound(self) -> Binding:
        if self.binding is None:
            raise PoolError("no bind before this request: send the connection spec first", kind=ErrorKind.PROTOCOL)
        return self.binding

    def bind(self, op_id: int, req: msgs.Bind, payload: bytes) -> None:
        spec = req.spec
        key = spec.pool_key(self.daemon.salt)
        self.binding = Binding(spec, req.settings, key, self.daemon)
        self.send(msgs.reply(msgs.Reply.BOUND, op_id))

    def run(self) -> None:
        try:
            if self._hello():
                self._requests()
        except frames.PeerClosed:
            pass
        except frames.ProtocolError as e:
            log.warning("protocol error from a client: %s", e)
            with contextlib.suppress(OSError):
                self.send(msgs.error(None, ErrorKind.PROTOCOL, str(e)))
                _drain_before_close(self.sock)
        except (TimeoutError, OSError):
            pass
        except Exception:
            log.exception("unexpected error serving a client")
        finally:
            self.sock.close()

    def _hello(self) -> bool:
        # A client that connects and says nothing (or half a header) is dropped at a deadline.
        msg, _payload = frames.recv_frame(self.sock, deadline=time.monotonic() + HELLO_TIMEOUT)
        if msg.get("op") != msgs.Op.HELLO.value or msg.get("version") != frames.PROTOCOL_VERSION:
            self.send(
                msgs.error(
                    None,
                    ErrorKind.PROTOCOL,
                    f"expected hello for protocol {frames.PROTOCOL_VERSION}, "
                    f"got op {str(msg.get('op'))[:40]!r} version {str(msg.get('version'))[:20]!r}",
                )
            )
            _drain_before_close(self.sock)
            return False
        self.send(msgs.reply(msgs.Reply.HELLO, None, msgs.HelloReply(frames.PROTOCOL_VERSION, os.getpid())))
        self.sock.settimeout(CLIENT_IDLE)
        return True

    def _requests(self) -> None:
        while not self.daemon.stopping.is_set():
            msg, payload = frames.recv_frame(self.sock, frame_timeout=FRAME_TIMEOUT)
            self.daemon.requests += 1
            op, op_id = msgs.envelope(msg)
            if op in msgs.STREAM_OPS:
                continue  # input of an operation that is over (or never was): dropped
            if op is None or op is msgs.Op.HELLO:
                self.send(msgs.error(op_id, ErrorKind.PROTOCOL, f"unknown op {str(msg.get('op'))[:40]!r}"))
                continue
            if op_id is None:
                self.send(
                    msgs.error(
                        None, ErrorKind.PROTOCOL, f"malformed {op.value} request: id must be a positive whole number"
                    )
                )
                continue
            if not self._dispatch(op, op_id, msg, payload):
                return

    def _dispatch(self, op: msgs.Op, op_id: int, msg: Dict[str, Any], payload: bytes) -> bool:
        """Run one request; False when the conversation must end (a bug in the daemon)."""
        try:
            body = msgs.REQUESTS[op].from_wire(msg)
        except Malformed as e:
            log.warning("malformed %s request: %s", op.value, e)
            self.send(msgs.error(op_id, ErrorKind.PROTOCOL, f"malformed {op.value} request: {e}"))
            return True
        try:
            HANDLERS[op](self, op_id, body, payload)
        except PoolError as e:
            self.send(msgs.error(op_id, e.kind, str(e)))
        except (OSError, frames.ProtocolError):
            raise
        except Exception as e:
            # A bug, not the client's fault: say so, and end this conversation only.
            log.exception("unexpected error serving %s", op.value)
            self.send(
                msgs.error(
                    op_id, ErrorKind.INTERNAL, f"pool daemon error in {op.value}: {e!r}"[:200] + "; see daemon.log"
                )
            )
            return False
        return True


def _exec(session: Session, op_id: int, req: msgs.Exec, payload: bytes) -> None:
    run_exec(session, op_id, req, payload)


def _put(session: Session, op_id: int, req: msgs.Transfer, payload: bytes) -> None:
    transfer(session, op_id, req, put=True)


def _fetch(session: Session, op_id: int, req: msgs.Transfer, payload: bytes) -> None:
    transfer(session, op_id, req, put=False)


def _warm(session: Session, op_id: int, req: msgs.Empty, payload: bytes) -> None:
    session.daemon.warmer.offer(session.bound())
    session.send(msgs.reply(msgs.Reply.OK, op_id))


def _admin(handler: Callable[[Session, int, Any], None]) -> Callable[[Session, int, Any, bytes], None]:
    return lambda session, op_id, req, payload: handler(session, op_id, req)


HANDLERS: Dict[msgs.Op, Callable[[Session, int, Any, bytes], None]] = {
    msgs.Op.BIND: Session.bind,
    msgs.Op.EXEC: _exec,
    msgs.Op.XRUN: run_xrun,
    msgs.Op.WARM: _warm,
    msgs.Op.PUT: _put,
    msgs.Op.FETCH: _fetch,
    msgs.Op.EVICT: _admin(admin.evict),
    msgs.Op.STATS: _admin(admin.stats),
    msgs.Op.STATUS: _admin(admin.status),
    msgs.Op.STOP: _admin(admin.stop),
    msgs.Op.PING: _admin(admin.ping),
}
