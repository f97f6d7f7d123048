# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pooled transport: a Paramiko transport and everything the daemon keeps about it.

Every field the daemon needs is declared here; nothing is ever set on Paramiko's objects.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Protocol

from .paramiko_guard import paramiko
from .paramiko_text import ParamikoText, classify

#: Give every channel open and request a deadline: Paramiko's own waits have none.
CHANNEL_TIMEOUT = 30.0


def open_refused(pt: PooledTransport, error: BaseException) -> bool:
    """Whether ``error`` is the server refusing a channel open on ``pt`` while ``pt`` lives
    (MaxSessions, a session slot not yet freed): a reason to wait on ``pt``, never to give it up.

    The refusal is a ChannelException, or only its text when another thread's open took
    Paramiko's one saved exception of the transport.
    """
    return pt.is_active() and (
        isinstance(error, paramiko.ChannelException) or classify(error) is ParamikoText.CHANNEL_REFUSED
    )


def send_exec(chan: paramiko.Channel, cmd: str) -> None:
    """Send an exec request without waiting for its reply (:func:`exec_accepted` reads it later)."""
    try:
        m = paramiko.Message()
        m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("exec")
        m.add_boolean(True)
        m.add_string(cmd)
        chan._event_pending()  # type: ignore[attr-defined]
        chan.transport._send_user_message(m)  # type: ignore[union-attr]
    except AttributeError:  # pragma: no cover - a Paramiko without these internals: wait as usual
        chan.exec_command(cmd)


def exec_accepted(chan: paramiko.Channel) -> bool:
    """Whether the server accepted the exec request: False when it refused it or the channel closed first.

    SSH messages are ordered and the server replies before the command's output, so a channel
    closed with the request unanswered never ran it. A reply slower than CHANNEL_TIMEOUT counts as
    accepted: the relay's deadlines and keepalives judge the channel from there.
    """
    if not chan.event.wait(CHANNEL_TIMEOUT):
        return True
    return bool(chan.event_ready)


class Releasable(Protocol):
    """A lease held for as long as this transport lives (the bastion's channel slot)."""

    def release(self, *, broken: bool = False, refused: bool = False) -> None:
        """Give the slot back; ``broken``: the transport is dead, ``refused``: the server refused a channel."""


@dataclass
class Spare:
    """A session channel opened ahead of the next command, and when."""

    channel: paramiko.Channel
    born: float


@dataclass
class _ProbeFlight:
    """One keepalive request on its way: its callers wait on ``done``, then read ``alive``."""

    done: threading.Event = field(default_factory=threading.Event)
    alive: bool = False


class PooledTransport:
    """One authenticated transport held by the pool.

    The settings that pace its keepalives and idle life are those of the request that used it
    last, kept by the pool with its other bookkeeping (``pool.entries.Entry.settings``).
    """

    def __init__(
        self,
        transport: paramiko.Transport,
        label: str,
        via: Optional[Releasable] = None,
        host_key_verified: bool = False,
    ) -> None:
        self.transport = transport
        self.label = label
        #: The bastion's lease, released when we close (a transport tunnelled through a jump host).
        self.via = via
        #: Whether the server's key was checked against known_hosts (False: checking off, or auto-added).
        self.host_key_verified = host_key_verified
        #: The keepalive request waiting for its reply, shared by every caller of ``probe``.
        self._probe_lock = threading.Lock()
        self._probe_flight: Optional[_ProbeFlight] = None
        #: When the daemon last sent a keepalive (maintenance paces them by this).
        self.last_probe = 0.0
        #: Why the daemon gave up on this transport (keepalives unanswered...), for error messages.
        self.lost_reason: Optional[str] = None
        #: The spare channel (see daemon/spare.py), the event of one being opened, and whether
        #: the server refused one (then no more spares here). Guarded by ``spare_lock``.
        self.spare_lock = threading.Lock()
        self.spare: Optional[Spare] = None
        self.spare_pending: Optional[threading.Event] = None
        self.spare_off = False
        #: The SFTP session kept for the next transfer (see daemon/transfer.py), and why transfers
        #: go through cat instead when SFTP cannot work here (a ``NoSftp``). Guarded by ``sftp_lock``.
        self.sftp_lock = threading.Lock()
        self.sftp: Optional[paramiko.SFTPClient] = None
        self.no_sftp: Optional[Enum] = None
        #: The server refused a channel while this transport held sessions open for later (its SFTP
        #: session, a spare): from then on it keeps neither.
        self.sessions_tight = False
        #: The server refused a pty on this transport (PermitTTY no): commands run without one.
        self.pty_refused = False

    def is_active(self) -> bool:
        return self.transport.is_active()

    def open_channel(self, timeout: float = CHANNEL_TIMEOUT) -> paramiko.Channel:
        return self.transport.open_session(timeout=timeout)

    def probe(self, timeout: float) -> bool:
        """A keepalive that needs a reply, bounded by ``timeout``.

        Paramiko's keepalives ask for no reply and its ``global_request`` waits forever,
        so the request runs on a helper thread and the caller gives up at its deadline.
        A caller that finds a probe already waiting (a health check and a keepalive meet on a
        transport just leased) waits for that probe's answer: guessing from the time of the last
        reply called a live transport dead and closed it under the command it was running.
        """
        with self._probe_lock:
            flight = self._probe_flight
            if flight is None:
                flight = self._probe_flight = _ProbeFlight()
                try:
                    threading.Thread(
                        target=self._send_probe, args=(flight,), name=f"probe-{self.label}", daemon=True
                    ).start()
                except BaseException:
                    self._probe_flight = None
                    raise
        if not flight.done.wait(timeout):
            return False
        return flight.alive

    def _send_probe(self, flight: _ProbeFlight) -> None:
        with contextlib.suppress(Exception):
            self.transport.global_request("keepalive@openssh.com", wait=True)
        # Any reply, success or failure (Paramiko gives None for both a refusal and a transport
        # that died), proves the peer is there as long as the transport still runs.
        flight.alive = self.transport.is_active()
        with self._probe_lock:
            self._probe_flight = None
        flight.done.set()

    def close_idle_sftp(self) -> bool:
        """Close the SFTP session kept for the next transfer, freeing its server session (the
        server refused a channel: it allows fewer sessions than the pool thought)."""
        with self.sftp_lock:
            sftp, self.sftp = self.sftp, None
        if sftp is None:
            return False
        with contextlib.suppress(Exception):
            sftp.close()
        return True

    def lost_suffix(self) -> str:
        """ " (why)" when the daemon itself gave up on this transport (keepalives), else ""."""
        return f" ({self.lost_reason})" if self.lost_reason else ""

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            if self.via is not None:
                via, self.via = self.via, None
                via.release()
