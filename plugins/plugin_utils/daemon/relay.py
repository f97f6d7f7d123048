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

from ..errors import ErrorKind
from ..ssh.exit_signal import exit_signal, status_of
from ..ssh.paramiko_guard import paramiko
from ..ssh.transport import PooledTransport
from ..wire import frames
from ..wire import messages as msgs

log = logging.getLogger("pooled_ssh.daemon")
Send = Callable[[Dict[str, Any], bytes], None]


#: Worker input held while the command does not take it; past this the worker's frames wait in
#: the socket (the worker keeps reading our replies meanwhile).
HIGH_WATER = 4 * 1024 * 1024
#: How often to look again while input waits for the channel's window (Paramiko's channel
#: descriptor signals only input), or for the exit status once the remote sent its end of file.
POLL = 0.05
SEND_BLOCK = 32768
#: Once a worker frame's first bytes arrived, the rest must arrive within this.
FRAME_TIMEOUT = 30.0


class _Relay:
    def __init__(
        self, sock: socket.socket, chan: paramiko.Channel, pt: PooledTransport, op_id: int, send: Send
    ) -> None:
        self.sock, self.chan, self.pt, self.op_id, self.send = sock, chan, pt, op_id, send
        self.pending = bytearray()  # worker input the channel has not taken yet
        self.eof_wanted = False  # the worker ended its input: shut the channel's write side once drained
        self.input_done = False  # nothing more goes to the command (it ended, or its input is closed)

    def forward_output(self) -> None:
        for ready, recv, t in (
            (self.chan.recv_ready, self.chan.recv, msgs.Reply.OUT),
            (self.chan.recv_stderr_ready, self.chan.recv_stderr, msgs.Reply.ERR),
        ):
            while ready():
                data = recv(65536)
                if not data:
                    break
                self.send(msgs.reply(t, self.op_id), data)

    def pump_input(self) -> None:
        """Give the channel what its window takes now, never waiting for more window."""
        chan = self.chan
        if self.input_done:
            self.pending.clear()
            return
        if chan.exit_status_ready() or chan.closed:
            # The command ended: what it did not read is dropped, its exit status is what counts.
            self.input_done = True
            self.pending.clear()
            return
        try:
            while self.pending and chan.send_ready():
                sent = chan.send(bytes(self.pending[:SEND_BLOCK]))
                if sent <= 0:
                    break
                del self.pending[:sent]
            if not self.pending and self.eof_wanted:
                chan.shutdown_write()
                self.input_done = True
        except (OSError, EOFError, paramiko.SSHException):
            # The remote end stopped taking input (it exited, or closed it): keep relaying its output.
            self.input_done = True
            self.pending.clear()

    def wants_worker(self) -> bool:
        return len(self.pending) < HIGH_WATER

    def from_worker(self) -> Optional[bool]:
        """Handle one frame of the worker: None to go on, else the relay's result (worker gone)."""
        try:
            data, payload = frames.recv_frame(self.sock, frame_timeout=FRAME_TIMEOUT)
        except (frames.PeerClosed, OSError):
            log.info("worker went away mid-command; closing its channel")
            return False
        op, op_id = msgs.envelope(data)
        if op in msgs.STREAM_OPS:
            if op_id != self.op_id:
                return None  # a late frame of an operation that is over: dropped
            if op is msgs.Op.STDIN:
                if not self.input_done and not self.eof_wanted:
                    self.pending += payload
            elif op is msgs.Op.EOF:
                self.eof_wanted = True
            else:
                return False
            self.pump_input()
            return None
        self.send(
            msgs.error(
                op_id,
                ErrorKind.PROTOCOL,
                f"a command (operation {self.op_id}) is still running on this connection: one operation at a time",
            ),
            b"",
        )
        return None

    def finished(self) -> bool:
        chan = self.chan
        return chan.closed or (chan.eof_received and chan.exit_status_ready()) or not chan.get_transport().is_active()


def timed_out(where: str, seconds: float, then: str = "it may still be running on the host") -> str:
    """What a command past its command_timeout is told, on the plain path and the executor's alike."""
    return f"{where}: command did not finish within {seconds:g}s (command_timeout); {then}"


def lost_while_running(where: str, pt: PooledTransport, alive: bool) -> str:
    """What a command whose session or connection died under it is told: the outcome is unknown."""
    return (
        f"{where}: the SSH {'session' if alive else 'connection'} was lost while the command ran"
        f"{pt.lost_suffix()}; its outcome is unknown and it was not re-run: check the host before retrying"
    )


def relay(
    sock: socket.socket, chan: paramiko.Channel, pt: PooledTransport, op_id: int, timeout: float, where: str, send: Send
) -> bool:
    """Relay until the command ends; True when the transport turned out to be dead.

    Input is buffered and handed to the channel as its window allows, so a command that does not
    read its input never blocks its output, its deadline or the worker's end. Once the remote
    sent its end of file, the channel's descriptor stays readable for good: it leaves the
    selector, and the exit status is looked for every POLL seconds instead of in a busy loop.
    """
    deadline = time.monotonic() + timeout if timeout > 0 else None
    r = _Relay(sock, chan, pt, op_id, send)
    chan.settimeout(0.0)
    with selectors.DefaultSelector() as selector:
        selector.register(chan, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        watching_chan, watching_sock = True, True
        while True:
            if watching_chan and chan.eof_received:
                selector.unregister(chan)
                watching_chan = False
            if watching_sock != r.wants_worker():
                if watching_sock:
                    selector.unregister(sock)
                else:
                    selector.register(sock, selectors.EVENT_READ)
                watching_sock = not watching_sock
            wait = 1.0 if watching_chan and not r.pending else POLL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            ready = {key.fileobj for key, _ev in selector.select(wait)} if (watching_chan or watching_sock) else set()
            if not ready and not (watching_chan or watching_sock):
                time.sleep(wait)  # nothing to watch until the window opens or the status comes
            r.forward_output()
            if sock in ready:
                result = r.from_worker()
                if result is not None:
                    return result
            r.pump_input()
            if r.finished():
                break
            if deadline is not None and time.monotonic() > deadline:
                log.info("%s: command_timeout of %gs reached; closing the channel", where, timeout)
                send(
                    msgs.error(
                        op_id,
                        ErrorKind.TIMEOUT,
                        timed_out(where, timeout),
                    ),
                    b"",
                )
                return False
    r.forward_output()
    if chan.exit_status_ready() and chan.exit_status != -1:
        send(msgs.reply(msgs.Reply.EXIT, op_id, msgs.Exit(chan.exit_status)), b"")
        return False
    killed = exit_signal(chan)
    if killed is not None:
        # No exit status because a signal ended the command: report it as a shell does.
        log.info("%s: the command was killed by signal %s", where, killed)
        send(msgs.reply(msgs.Reply.EXIT, op_id, msgs.Exit(status_of(killed))), b"")
        return False
    alive = chan.get_transport().is_active()
    send(
        msgs.error(
            op_id,
            ErrorKind.UNKNOWN_OUTCOME,
            lost_while_running(where, pt, alive),
        ),
        b"",
    )
    return not alive
