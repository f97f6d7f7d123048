# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming a running command: its output to the worker, the worker's input to the channel.

Waits with :mod:`selectors` (``select.select`` fails for descriptors from 1024 on). Frames
from the worker are taken only when they name this operation: a frame of another operation
is dropped, a new request is refused (one operation at a time per worker connection).
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from typing import Any, Callable, Dict, Optional

import paramiko

from ..errors import ErrorKind
from ..ssh.transport import PooledTransport
from ..wire import frames
from ..wire import messages as msgs

log = logging.getLogger("pooled_ssh.daemon")
Send = Callable[[Dict[str, Any], bytes], None]


class _Relay:
    def __init__(self, sock: socket.socket, chan: paramiko.Channel, pt: PooledTransport, op_id: int,
                 send: Send) -> None:
        self.sock, self.chan, self.pt, self.op_id, self.send = sock, chan, pt, op_id, send

    def forward_output(self) -> None:
        for ready, recv, t in ((self.chan.recv_ready, self.chan.recv, msgs.Reply.OUT),
                               (self.chan.recv_stderr_ready, self.chan.recv_stderr, msgs.Reply.ERR)):
            while ready():
                data = recv(65536)
                if not data:
                    break
                self.send(msgs.reply(t, self.op_id), data)

    def from_worker(self) -> Optional[bool]:
        """Handle one frame of the worker: None to go on, else the relay's result (worker gone)."""
        try:
            data, payload = frames.recv_frame(self.sock)
        except (frames.PeerClosed, OSError):
            log.info("worker went away mid-command; closing its channel")
            return False
        op, op_id = msgs.envelope(data)
        if op in msgs.STREAM_OPS:
            if op_id != self.op_id:
                return None  # a late frame of an operation that is over: dropped
            if op is msgs.Op.STDIN:
                self.chan.sendall(payload)
            elif op is msgs.Op.EOF:
                self.chan.shutdown_write()
            else:
                return False
            return None
        self.send(msgs.error(op_id, ErrorKind.PROTOCOL, f"a command (operation {self.op_id}) is still running "
                             "on this connection: one operation at a time"), b"")
        return None

    def finished(self) -> bool:
        chan = self.chan
        return chan.closed or (chan.eof_received and chan.exit_status_ready()) or not chan.get_transport().is_active()


def relay(sock: socket.socket, chan: paramiko.Channel, pt: PooledTransport, op_id: int, timeout: float,
          where: str, send: Send) -> bool:
    """Relay until the command ends; True when the transport turned out to be dead."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    r = _Relay(sock, chan, pt, op_id, send)
    with selectors.DefaultSelector() as selector:
        selector.register(chan, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in selector.select(1.0)}
            r.forward_output()
            if sock in ready:
                result = r.from_worker()
                if result is not None:
                    return result
            if r.finished():
                break
            if deadline is not None and time.monotonic() > deadline:
                send(msgs.error(op_id, ErrorKind.TIMEOUT, f"{where}: command did not finish within {timeout:g}s "
                                "(command_timeout); it may still be running on the host"), b"")
                return False
    r.forward_output()
    if chan.exit_status_ready() and chan.exit_status != -1:
        send(msgs.reply(msgs.Reply.EXIT, op_id, msgs.Exit(chan.exit_status)), b"")
        return False
    alive = chan.get_transport().is_active()
    send(msgs.error(op_id, ErrorKind.UNKNOWN_OUTCOME,
                    f"{where}: the SSH {'session' if alive else 'connection'} was lost while the command ran"
                    f"{pt.lost_suffix()}; its outcome is unknown and it was not re-run: check the host before "
                    "retrying"), b"")
    return not alive
