# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exec fast path: a session channel opened ahead of the next command on a transport.

Each command costs round trips: channel open, exec request and its reply, then the command's
input, output and exit status. We keep one session channel opened ahead on a transport that
just ran a command, so the next command on it skips the channel-open round trip. A spare
holds one of the server's MaxSessions slots: it is opened only while the pool knows of two
free slots, it is taken by the next session request on its transport before any new channel
is opened (so it never makes the server refuse one of ours), a refused spare turns spares off
for that transport, and an old spare is closed rather than used.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from ..pool.entries import Lease
from ..ssh.paramiko_guard import paramiko
from ..ssh.transport import CHANNEL_TIMEOUT, PooledTransport, Spare, open_refused

#: A spare older than this is closed, not used (the server may time idle channels out).
SPARE_MAX_AGE = 20.0
SFTP_WINDOW = 8 * 1024 * 1024
SFTP_PACKET = 32768


#: Dropbear before this release kills the whole connection ("Unknown channel") when a channel
#: opened before a child exited is used after it, and closes channels early: no spares for it.
DROPBEAR_FIXED = (2024, 86)


def spares_unsafe(banner: str) -> bool:
    """Whether the server's identification names a server known to break pre-opened channels."""
    name, _sep, version = (banner or "").partition("_")
    if not name.lower().endswith("dropbear"):
        return False
    try:
        parts = tuple(int(p) for p in version.split()[0].split(".")[:2])
    except (ValueError, IndexError):
        return True  # an unreadable Dropbear version: take no risk
    return parts < DROPBEAR_FIXED


def claim_spare(pt: PooledTransport) -> Optional[paramiko.Channel]:
    """The transport's spare session channel (waiting for one being opened), or None."""
    with pt.spare_lock:
        pending = pt.spare_pending
    if pending is not None:
        pending.wait(CHANNEL_TIMEOUT)
    with pt.spare_lock:
        spare, pt.spare = pt.spare, None
    if spare is None:
        return None
    chan = spare.channel
    if chan.closed or not chan.active:
        # The server closed a channel nobody used: it closes them early; no more spares here.
        with pt.spare_lock:
            pt.spare_off = True
        chan.close()
        return None
    if time.monotonic() - spare.born > SPARE_MAX_AGE or not pt.is_active():
        chan.close()
        return None
    return chan


def prime_spare(lease: Lease[PooledTransport]) -> None:
    """Open a spare session channel on the lease's transport in the background, when there is room."""
    pt, entry = lease.conn, lease.entry
    with pt.spare_lock:
        if not pt.spare_off and spares_unsafe(pt.transport.remote_version):
            pt.spare_off = True
        if (
            pt.spare is not None
            or pt.spare_pending is not None
            or pt.spare_off
            or entry.in_use + 2 > entry.max_channels
            or not entry.usable
        ):
            return
        ready = pt.spare_pending = threading.Event()
    threading.Thread(target=_open_spare, args=(pt, ready), name="spare", daemon=True).start()


def _open_spare(pt: PooledTransport, ready: threading.Event) -> None:
    chan = None
    refused = False
    try:
        chan = pt.transport.open_session(window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET, timeout=CHANNEL_TIMEOUT)
    except paramiko.SSHException as e:
        refused = open_refused(pt, e)  # the server is full: no spares on this transport
    except Exception:
        pass
    finally:
        with pt.spare_lock:
            if refused:
                pt.spare_off = True
            if chan is not None:
                pt.spare = Spare(chan, time.monotonic())
            pt.spare_pending = None
        ready.set()
