# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exec operation: lease a transport, open (or claim) a channel, start the command, relay it.

Also the channel-open step every operation uses (:func:`with_channel`). When to try again is
decided by :mod:`.retry` alone: a command is started again only when it provably did not run.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple, TypeVar

from ..errors import ErrorKind, PoolError
from ..pool.entries import Lease
from ..ssh.paramiko_guard import paramiko
from ..ssh.paramiko_text import ParamikoText, classify
from ..ssh.transport import CHANNEL_TIMEOUT, PooledTransport, exec_accepted, open_refused, send_exec
from ..wire import messages as msgs
from .relay import relay
from .retry import ATTEMPTS, Step, Verdict, judge
from .spare import claim_spare, prime_spare
from .xrun import close_idle_executors

if TYPE_CHECKING:
    from .session import Binding, Session

log = logging.getLogger("pooled_ssh.daemon")

T = TypeVar("T")
Opener = Callable[[PooledTransport], T]


def _refused(binding: Binding, lease: Lease[PooledTransport], error: BaseException) -> PoolError:
    # The transport is fine; the server refused this request (no SFTP subsystem...).
    lease.release()
    return PoolError(f"{binding.spec.where}: the server refused the request ({error})", kind=ErrorKind.REFUSED)


#: Waits before opening again on the same transport after a refusal that was not the server's
#: limit: the server frees a closed session's slot only once its process (sftp-server...) exited.
FREED_SLOT_WAITS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def _drop_spare(pt: PooledTransport) -> bool:
    with pt.spare_lock:
        spare, pt.spare = pt.spare, None
    if spare is None:
        return False
    spare.channel.close()
    return True


def _open_on_same_transport(lease: Lease[PooledTransport], opener: Opener[T]) -> T:
    """Open; when the server refuses and the refusal cannot be its limit (this request is the only
    one using the transport, or what the transport kept open for later holds the sessions: its
    SFTP session, its spare channel, an idle executor), free what it kept and open again on the
    same transport after bounded waits. With MaxSessions 1 the transport is then never given up
    for a refusal."""
    pt = lease.conn
    try:
        return opener(pt)
    except paramiko.SSHException as e:  # ChannelException included
        if not open_refused(pt, e):
            raise
        freed = pt.close_idle_sftp() | _drop_spare(pt) | close_idle_executors(pt)
        if freed:
            pt.sessions_tight = True
            with pt.spare_lock:
                pt.spare_off = True
        if not freed and lease.entry.in_use > 1:
            raise  # others hold channels: this is the server's MaxSessions, the pool learns it
    for wait in FREED_SLOT_WAITS:
        time.sleep(wait)
        try:
            return opener(pt)
        except paramiko.SSHException as e:
            if not open_refused(pt, e):
                raise
    return opener(pt)  # refused again: the usual policy decides


def with_channel(binding: Binding, opener: Opener[T]) -> Tuple[Lease[PooledTransport], T]:
    """Lease a transport and open a channel on it, moving on when the server says no."""
    last: Optional[Exception] = None
    for _attempt in range(ATTEMPTS[Step.OPEN]):
        lease = binding.lease()
        try:
            return lease, _open_on_same_transport(lease, opener)
        except (paramiko.SSHException, EOFError, OSError) as e:  # ChannelException included
            last = e
            meaning = classify(e) if isinstance(e, paramiko.SSHException) else None
            # Paramiko's bare "Unable to open channel." is a ChannelException another thread took.
            verdict = judge(
                Step.OPEN,
                alive=lease.conn.is_active(),
                refused=isinstance(e, paramiko.ChannelException) or meaning is ParamikoText.CHANNEL_REFUSED,
                answered=meaning is not ParamikoText.CHANNEL_TIMEOUT,
            )
            if verdict is Verdict.REFUSED:
                raise _refused(binding, lease, e) from None
            # RETRY_SAME: the pool learns the server's MaxSessions from the refusal and the next lease
            # waits for a slot; the transport is never taken for dead because of it.
            lease.release(refused=verdict is Verdict.RETRY_SAME, broken=verdict is not Verdict.RETRY_SAME)
        except BaseException:
            # Whatever else the opener raised (an SFTP session that cannot start...): the lease goes back.
            lease.release(broken=not lease.conn.is_active())
            raise
    raise PoolError(
        f"{binding.spec.where}: could not open a channel ({last}); check sshd's MaxSessions and logs",
        kind=ErrorKind.CONNECT,
    )


class _Starter:
    """Opens the command's channel: a spare when there is one, and sends the exec and its input."""

    def __init__(self, req: msgs.Exec, payload: bytes) -> None:
        self.req, self.payload = req, payload
        self.use_spare = True
        self.from_spare: List[bool] = []
        #: The exec request went out on the channel last returned (or the one that failed).
        self.sent = False

    def __call__(self, pt: PooledTransport) -> paramiko.Channel:
        req = self.req
        chan = claim_spare(pt) if self.use_spare else None
        spare = chan is not None
        if chan is None:
            chan = pt.open_channel(CHANNEL_TIMEOUT)
        self.sent = False
        try:
            chan.settimeout(CHANNEL_TIMEOUT)
            if req.pty and not pt.pty_refused:
                chan = self._pty(pt, chan)
            chan.settimeout(None)
            if not pt.is_active():
                # Paramiko drops what is sent on a dead transport: the request would never leave.
                raise EOFError("the transport died before the command was sent")
            # The input follows the exec request at once, as OpenSSH does; the reply is read later.
            send_exec(chan, req.cmd)
            self.sent = True
        except BaseException:
            chan.close()
            raise
        self.from_spare.append(spare)
        try:
            if self.payload:
                chan.sendall(self.payload)
            if req.eof:
                chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            # The channel or its transport is gone: whether the command started is for
            # exec_accepted and the retry policy to tell, never a reason to send it again here.
            pass
        return chan

    def _pty(self, pt: PooledTransport, chan: paramiko.Channel) -> paramiko.Channel:
        """Ask for a pty; a server that refuses one (PermitTTY no) closes the channel: run this and
        every later command on the transport without one, on a fresh channel, as ssh -t would not."""
        req = self.req
        try:
            chan.get_pty(term=req.term or "vt100", width=req.width, height=req.height)
            return chan
        except paramiko.SSHException:
            if not pt.is_active():
                raise
        chan.close()
        pt.pty_refused = True
        log.info("%s: the server refused a pty (PermitTTY no?); commands on this transport run without one", pt.label)
        fresh = pt.open_channel(CHANNEL_TIMEOUT)
        fresh.settimeout(CHANNEL_TIMEOUT)
        return fresh


def _start(binding: Binding, starter: _Starter) -> Tuple[Lease[PooledTransport], paramiko.Channel]:
    for _attempt in range(ATTEMPTS[Step.EXEC_SENT]):
        lease, chan = with_channel(binding, starter)
        if exec_accepted(chan):
            return lease, chan
        chan.close()
        alive = lease.conn.is_active()
        verdict = judge(Step.EXEC_SENT, alive=alive, refused=True, from_spare=starter.from_spare[-1])
        lease.release(broken=not alive)
        if verdict is Verdict.UNKNOWN:
            raise PoolError(
                f"{binding.spec.where}: the SSH connection was lost after the command was sent and "
                f"before the server answered{lease.conn.lost_suffix()}; its outcome is unknown and it "
                "was not re-run: check the host before retrying",
                kind=ErrorKind.UNKNOWN_OUTCOME,
            )
        if verdict is Verdict.REFUSED:
            raise PoolError(f"{binding.spec.where}: the server refused the request (exec)", kind=ErrorKind.REFUSED)
        starter.use_spare = False  # a spare the server had closed: a fresh channel
    raise PoolError(f"{binding.spec.where}: could not start the command", kind=ErrorKind.CONNECT)


def run_exec(session: Session, op_id: int, req: msgs.Exec, payload: bytes) -> None:
    binding = session.bound()
    lease, chan = _start(binding, _Starter(req, payload))
    broken = False
    try:
        prime_spare(lease)
        session.send(
            msgs.reply(msgs.Reply.STARTED, op_id, msgs.Started(lease.hit, lease.entry.id, round(lease.waited, 6)))
        )
        broken = relay(session.sock, chan, lease.conn, op_id, req.command_timeout, binding.spec.where, session.send)
    finally:
        chan.close()
        lease.release(broken=broken)
