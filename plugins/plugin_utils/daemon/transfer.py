# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""put and fetch: over one SFTP session per transport, or through ``cat`` where SFTP cannot work.

Either way the file lands under a temporary name renamed into place once complete: a transfer
cut midway never leaves a partial file under the destination's name (the partial one has a
``.pooled-*.part`` name and is removed when the connection still allows).

The SFTP session is opened by the first transfer on a transport and kept for the next ones
(closed with the transport, or when the server turns out to allow few sessions): one per
transfer costs round trips, and Dropbear 2022.83 often refuses the channel opened after an SFTP
session's child exited. A transfer takes the session for its duration (an SFTPClient is not
shared between threads); a second transfer at the same time opens its own, closed after use.

A shell that prints at login (a ``.bashrc`` that echoes) corrupts the SFTP stream, because the
server starts sftp-server through it. That is told apart when the session starts, remembered
for the transport, logged once in OpenSSH's words, and transfers go through ``cat`` instead:
what the shell prints is discarded for put, and fetch's output is framed by a random marker so
what came before it is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import stat
from enum import Enum
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..errors import ErrorKind, PoolError
from ..pool.entries import Lease
from ..ssh.paramiko_guard import paramiko
from ..ssh.transport import CHANNEL_TIMEOUT, PooledTransport
from ..wire import messages as msgs
from .exec import with_channel
from .retry import ATTEMPTS, Step, Verdict, judge
from .spare import SFTP_PACKET, SFTP_WINDOW

if TYPE_CHECKING:
    from .session import Binding, Session

log = logging.getLogger("pooled_ssh.daemon")

#: OpenSSH's words for a shell that prints in a non-interactive session (sftp says them).
NOISY_SHELL = "Ensure the remote shell produces no output for non-interactive sessions"
#: A kept SFTP session holds one of the server's sessions: keep one only where the pool knows
#: of room for it, a command and a spare channel.
KEEP_SFTP_MIN_CHANNELS = 3
#: How much of what a noisy shell printed is quoted in the log.
NOISE_SAMPLE = 120
#: fetch through cat: the exit status when the remote file cannot be read.
_UNREADABLE = 66


class NoSftp(Enum):
    """Why a transport's transfers go through ``cat``."""

    NO_SUBSYSTEM = "the server has no SFTP subsystem"
    NOISY_SHELL = "the remote shell printed text before the SFTP session started"


def partial_name(path: str) -> str:
    """A temporary name next to ``path`` (same directory, so the final rename is atomic)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.pooled-{os.urandom(4).hex()}.part")


def _sftp_replace(sftp: paramiko.SFTPClient, source: str, dest: str) -> None:
    """Rename over an existing file: OpenSSH's posix-rename, else remove then rename."""
    try:
        sftp.posix_rename(source, dest)
    except OSError:
        with contextlib.suppress(OSError):
            sftp.remove(dest)
        sftp.rename(source, dest)


def local_mode(req: msgs.Transfer, remote_mode: Optional[int]) -> int:
    """The mode OpenSSH's sftp and scp give a fetched file: an existing file keeps its own; a new
    one gets the remote file's permissions (owner-writable) under the worker's umask."""
    with contextlib.suppress(OSError):
        st = os.stat(req.local)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    mode = (remote_mode & 0o777) | stat.S_IWUSR if remote_mode is not None else 0o666
    umask = req.umask if req.umask is not None else 0o077
    return mode & ~umask


def _discard_partial(sftp: Optional[paramiko.SFTPClient], partial: str, lease: Lease[PooledTransport]) -> None:
    """Remove a partial file: locally (fetch) or, while the transport lives, remotely (put)."""
    if sftp is None:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    elif lease.conn.is_active():
        with contextlib.suppress(Exception):
            sftp.remove(partial)


class _CannotSftp(Exception):
    """SFTP cannot work on this transport (see :class:`NoSftp`); the transport itself is fine."""

    def __init__(self, why: NoSftp, detail: str) -> None:
        super().__init__(f"{why.value} ({detail})")
        self.why = why


def _start_sftp(pt: PooledTransport) -> paramiko.SFTPClient:
    """A new SFTP session on ``pt``; its channel is closed again when the session does not start."""
    chan = pt.transport.open_session(window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET, timeout=CHANNEL_TIMEOUT)
    try:
        chan.settimeout(CHANNEL_TIMEOUT)
        chan.invoke_subsystem("sftp")
        sftp = paramiko.SFTPClient(chan)
        chan.settimeout(None)
        return sftp
    except paramiko.SFTPError as e:
        # The server's first bytes were not an SFTP packet: what a login shell printed.
        chan.close()
        raise _CannotSftp(NoSftp.NOISY_SHELL, str(e)) from None
    except (paramiko.SSHException, EOFError, OSError) as e:
        chan.close()
        if not pt.is_active():
            raise
        raise _CannotSftp(NoSftp.NO_SUBSYSTEM, str(e) or type(e).__name__) from None
    except BaseException:
        chan.close()
        raise


def _take_sftp(pt: PooledTransport) -> paramiko.SFTPClient:
    """The transport's idle SFTP session, or a new one (raises _CannotSftp)."""
    with pt.sftp_lock:
        if pt.no_sftp is not None:
            raise _CannotSftp(NoSftp(pt.no_sftp.value), "remembered for this transport")
        sftp, pt.sftp = pt.sftp, None
    if sftp is not None:
        chan = sftp.get_channel()
        if chan is not None and not chan.closed and pt.is_active():
            return sftp
        with contextlib.suppress(Exception):
            sftp.close()
    try:
        return _start_sftp(pt)
    except _CannotSftp as e:
        with pt.sftp_lock:
            pt.no_sftp = e.why
        if e.why is NoSftp.NOISY_SHELL:
            log.warning("%s: %s; %s (transfers go through cat on this transport)", pt.label, e, NOISY_SHELL)
        else:
            log.info("%s: %s; transferring through cat", pt.label, e)
        raise


def _give_back(lease: Lease[PooledTransport], sftp: paramiko.SFTPClient, healthy: bool) -> None:
    """Keep the session for the next transfer when there is room on the server, else close it."""
    pt = lease.conn
    with pt.sftp_lock:
        if (
            healthy
            and pt.sftp is None
            and pt.is_active()
            and not pt.sessions_tight
            and lease.entry.max_channels >= KEEP_SFTP_MIN_CHANNELS
        ):
            pt.sftp = sftp
            return
    with contextlib.suppress(Exception):
        sftp.close()


def _sftp_copy(
    binding: Binding, lease: Lease[PooledTransport], sftp: paramiko.SFTPClient, req: msgs.Transfer, put: bool
) -> None:
    """Copy, then rename into place (raises PoolError, or _Broken when the transport broke)."""
    local, remote, where = req.local, req.remote, binding.spec.where
    partial = partial_name(remote if put else local)
    try:
        if put:
            sftp.put(local, partial, confirm=True)
            _sftp_replace(sftp, partial, remote)
        else:
            mode = local_mode(req, sftp.stat(remote).st_mode)
            sftp.get(remote, partial)
            os.chmod(partial, mode)
            os.replace(partial, local)
    except FileNotFoundError as e:
        _discard_partial(sftp if put else None, partial, lease)
        if put:
            what = f"local file {local}" if e.filename == local else f"remote directory of {remote}"
        else:
            what = f"remote file {remote}" if e.filename != partial else f"local directory of {local}"
        raise PoolError(f"{where}: {what} does not exist", kind=ErrorKind.FILE) from None
    except PermissionError:
        _discard_partial(sftp if put else None, partial, lease)
        raise PoolError(f"{where}: permission denied on {remote if put else local}", kind=ErrorKind.FILE) from None
    except (EOFError, paramiko.SSHException, paramiko.SFTPError, OSError) as e:
        broken = not lease.conn.is_active()
        _discard_partial(sftp if put else None, partial, lease)
        error = PoolError(
            f"{where}: transfer of {local if put else remote} failed ({str(e) or type(e).__name__})"
            f"{'; the connection was lost' if broken else ''}; no partial file was left at "
            f"{remote if put else local}",
            kind=ErrorKind.CONNECT if broken else ErrorKind.FILE,
        )
        raise _Broken(error, broken, partial if put else None) from None


class _Broken(Exception):
    """A transfer that failed with its transport (``broken``), and the remote partial file of a put
    that could not be removed over it (the next try on another transport removes it)."""

    def __init__(self, error: PoolError, broken: bool, stale: Optional[str] = None) -> None:
        super().__init__(str(error))
        self.error, self.broken, self.stale = error, broken, stale


def transfer(session: Session, op_id: int, req: msgs.Transfer, put: bool) -> None:
    """Copy a file; a transfer cut by a dying transport is tried again on another one when the
    retry policy says so (the file goes to a temporary name, renamed only once complete)."""
    attempts = ATTEMPTS[Step.TRANSFER]
    stale: List[str] = []
    for attempt in range(1, attempts + 1):
        try:
            _transfer_once(session, op_id, req, put, stale)
            return
        except _Broken as e:
            if e.stale is not None and e.broken:
                stale.append(e.stale)
            verdict = judge(Step.TRANSFER, alive=not e.broken)
            if verdict is not Verdict.RETRY_FRESH or attempt == attempts:
                raise e.error from None
            log.info("%s (%s); trying again on another transport", e.error, verdict.value)


def _transfer_once(session: Session, op_id: int, req: msgs.Transfer, put: bool, stale: List[str]) -> None:
    """Copy a file with the transport's SFTP session, or through ``cat`` when SFTP cannot work."""
    binding = session.bound()
    try:
        lease, sftp = with_channel(binding, _take_sftp)
    except _CannotSftp:
        _transfer_with_cat(session, op_id, req, put)
        return
    broken = False
    healthy = False
    try:
        for path in stale:  # what an earlier try left on the host, over the transport that died
            with contextlib.suppress(Exception):
                sftp.remove(path)
        _sftp_copy(binding, lease, sftp, req, put)
        healthy = True
    except _Broken as e:
        broken = e.broken
        raise
    except PoolError:
        healthy = True  # a missing file or a refused permission: the session is fine
        raise
    finally:
        _give_back(lease, sftp, healthy)
        lease.release(broken=broken)
    session.send(msgs.reply(msgs.Reply.DONE, op_id, msgs.Done(lease.hit, lease.entry.id)))


# -- through cat -------------------------------------------------------------------------------


def _put_command(req: msgs.Transfer) -> str:
    size = os.path.getsize(req.local)
    tmp, dest = shlex.quote(partial_name(req.remote)), shlex.quote(req.remote)
    return f"cat > {tmp} && test $(wc -c < {tmp}) -eq {size} && mv -f {tmp} {dest} || {{ rm -f {tmp}; exit 1; }}"


def fetch_command(remote: str, marker: str) -> str:
    """Print ``marker size`` on a line of its own, then the file: whatever a login shell printed
    comes before the marker and is skipped."""
    f = shlex.quote(remote)
    return (
        f"if test -f {f} && test -r {f}; then printf '%s %s\\n' {marker} \"$(wc -c < {f})\" && exec cat -- {f}; "
        f"else exit {_UNREADABLE}; fi"
    )


class MarkerReader:
    """Skips what comes before ``marker size\\n`` in a fetch's output; then counts the file's bytes."""

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode("ascii") + b" "
        self.head = b""
        self.size: Optional[int] = None
        self.noise = b""
        self.received = 0

    def feed(self, data: bytes) -> bytes:
        """The file's bytes in ``data`` (none before the marker line has been seen)."""
        if self.size is not None:
            self.received += len(data)
            return data
        self.head += data
        at = self.head.find(self.marker)
        end = self.head.find(b"\n", at) if at >= 0 else -1
        if end < 0:
            if len(self.head) > 1024 * 1024:
                raise ValueError("no transfer marker in the first MiB of output")
            return b""
        self.noise = self.head[:at]
        try:
            self.size = int(self.head[at + len(self.marker) : end])
        except ValueError:
            raise ValueError("the remote size could not be read") from None
        rest, self.head = self.head[end + 1 :], b""
        self.received = len(rest)
        return rest

    def complete(self) -> bool:
        return self.size is not None and self.received == self.size


def _cat_stream(
    chan: paramiko.Channel, req: msgs.Transfer, put: bool, partial: str, marker: str
) -> Tuple[int, Optional[MarkerReader]]:
    if put:
        with open(req.local, "rb") as f:
            while True:
                block = f.read(1024 * 1024)
                if not block:
                    break
                chan.sendall(block)
        chan.shutdown_write()
        return chan.recv_exit_status(), None
    reader = MarkerReader(marker)
    with open(partial, "wb") as f:
        while True:
            block = chan.recv(1024 * 1024)
            if not block:
                break
            f.write(reader.feed(block))
    return chan.recv_exit_status(), reader


def _transfer_with_cat(session: Session, op_id: int, req: msgs.Transfer, put: bool) -> None:
    """As with SFTP, the file lands under a temporary name and is renamed once its size is right:
    a cut connection gives ``cat`` an early end of input, not an error."""
    binding = session.bound()
    where = binding.spec.where
    marker = f"POOLED-SSH-{os.urandom(8).hex()}"
    cmd = _put_command(req) if put else fetch_command(req.remote, marker)

    def opener(pt: PooledTransport) -> paramiko.Channel:
        chan = pt.open_channel(CHANNEL_TIMEOUT)
        try:
            chan.exec_command(cmd)
        except BaseException:
            chan.close()
            raise
        return chan

    lease, chan = with_channel(binding, opener)
    partial = partial_name(req.local)
    reader: Optional[MarkerReader] = None
    try:
        try:
            rc, reader = _cat_stream(chan, req, put, partial, marker)
        except ValueError as e:
            raise PoolError(
                f"{where}: fetch of {req.remote} failed ({e}); {NOISY_SHELL}", kind=ErrorKind.FILE
            ) from None
        if not put and rc == 0 and reader is not None and reader.complete():
            os.chmod(partial, local_mode(req, None))
            os.replace(partial, req.local)
    finally:
        if not put:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        chan.close()
        lease.release(broken=not lease.conn.is_active())
    if not put and rc == _UNREADABLE:
        raise PoolError(f"{where}: remote file {req.remote} does not exist or cannot be read", kind=ErrorKind.FILE)
    if rc != 0 or (reader is not None and not reader.complete()):
        got = f"; {reader.received} of {reader.size} bytes arrived" if reader is not None and reader.size else ""
        broken = not lease.conn.is_active()
        raise _Broken(
            PoolError(
                f"{where}: transfer of {req.local if put else req.remote} through cat failed (exit {rc}{got})"
                f"{'; the connection was lost' if broken else ''}; no partial file was left at "
                f"{req.remote if put else req.local}",
                kind=ErrorKind.CONNECT if broken else ErrorKind.FILE,
            ),
            broken,
        )
    if reader is not None and reader.noise:
        log.debug("%s: skipped %d bytes the remote shell printed before the file", where, len(reader.noise))
    session.send(msgs.reply(msgs.Reply.DONE, op_id, msgs.Done(lease.hit, lease.entry.id, "cat")))
