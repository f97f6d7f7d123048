# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""put and fetch: SFTP to a temporary name renamed into place, or ``cat`` where there is no SFTP.

A transfer cut midway never leaves a partial file under the destination's name: the partial
one has a ``.pooled-*.part`` name and is removed when the connection still allows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import stat
from typing import TYPE_CHECKING, Optional

import paramiko

from ..errors import ErrorKind, PoolError
from ..pool import Lease
from ..ssh.transport import CHANNEL_TIMEOUT, PooledTransport
from ..wire import messages as msgs
from .exec import with_channel
from .spare import SFTP_PACKET, SFTP_WINDOW

if TYPE_CHECKING:
    from .session import Binding, Session

log = logging.getLogger("pooled_ssh.daemon")


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


def _discard_partial(sftp: Optional[paramiko.SFTPClient], partial: str, lease: Lease[PooledTransport]) -> None:
    """Remove a partial file: locally (fetch) or, while the transport lives, remotely (put)."""
    if sftp is None:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    elif lease.conn.is_active():
        with contextlib.suppress(Exception):
            sftp.remove(partial)


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


def _open_sftp(pt: PooledTransport) -> paramiko.SFTPClient:
    sftp = paramiko.SFTPClient.from_transport(pt.transport, window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET)
    if sftp is None:  # Paramiko returns None when the subsystem channel could not be opened
        raise paramiko.SSHException("no SFTP channel")
    return sftp


def _sftp_copy(binding: Binding, lease: Lease[PooledTransport], sftp: paramiko.SFTPClient, req: msgs.Transfer,
               put: bool) -> bool:
    """Copy, then rename into place; returns whether the transport broke (raises PoolError on failure)."""
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
    except (EOFError, paramiko.SSHException, OSError) as e:
        broken = not lease.conn.is_active()
        _discard_partial(sftp if put else None, partial, lease)
        raise _Broken(PoolError(
            f"{where}: transfer of {local if put else remote} failed ({str(e) or type(e).__name__})"
            f"{'; the connection was lost' if broken else ''}; no partial file was left at "
            f"{remote if put else local}", kind=ErrorKind.CONNECT if broken else ErrorKind.FILE), broken) from None
    return False


class _Broken(Exception):
    def __init__(self, error: PoolError, broken: bool) -> None:
        super().__init__(str(error))
        self.error, self.broken = error, broken


def transfer(session: Session, op_id: int, req: msgs.Transfer, put: bool) -> None:
    """Copy a file with SFTP, or through ``cat`` when the server has no SFTP subsystem."""
    binding = session.bound()
    try:
        lease, sftp = with_channel(binding, _open_sftp)
    except PoolError as e:
        if e.kind is not ErrorKind.REFUSED:
            raise
        log.info("%s has no SFTP subsystem; transferring through cat", binding.spec.where)
        _transfer_with_cat(session, op_id, req, put)
        return
    broken = False
    try:
        broken = _sftp_copy(binding, lease, sftp, req, put)
    except _Broken as e:
        broken = e.broken
        raise e.error from None
    finally:
        with contextlib.suppress(Exception):
            sftp.close()
        lease.release(broken=broken)
    session.send(msgs.reply(msgs.Reply.DONE, op_id, msgs.Done(lease.hit, lease.entry.id)))


def _cat_command(req: msgs.Transfer, put: bool) -> str:
    if not put:
        return f"cat {shlex.quote(req.remote)}"
    size = os.path.getsize(req.local)
    tmp, dest = shlex.quote(partial_name(req.remote)), shlex.quote(req.remote)
    return f"cat > {tmp} && test $(wc -c < {tmp}) -eq {size} && mv -f {tmp} {dest} || {{ rm -f {tmp}; exit 1; }}"


def _cat_stream(chan: paramiko.Channel, req: msgs.Transfer, put: bool, partial: str) -> int:
    if put:
        with open(req.local, "rb") as f:
            while True:
                block = f.read(1024 * 1024)
                if not block:
                    break
                chan.sendall(block)
        chan.shutdown_write()
    else:
        with open(partial, "wb") as f:
            while True:
                block = chan.recv(1024 * 1024)
                if not block:
                    break
                f.write(block)
    rc = chan.recv_exit_status()
    if not put and rc == 0:
        os.chmod(partial, local_mode(req, None))
        os.replace(partial, req.local)
    return rc


def _transfer_with_cat(session: Session, op_id: int, req: msgs.Transfer, put: bool) -> None:
    """As with SFTP, the file lands under a temporary name and is renamed once its size is right:
    a cut connection gives ``cat`` an early end of input, not an error."""
    binding = session.bound()
    cmd = _cat_command(req, put)

    def opener(pt: PooledTransport) -> paramiko.Channel:
        chan = pt.open_channel(CHANNEL_TIMEOUT)
        chan.exec_command(cmd)
        return chan

    lease, chan = with_channel(binding, opener)
    partial = partial_name(req.local)
    try:
        rc = _cat_stream(chan, req, put, partial)
    finally:
        if not put:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        chan.close()
        lease.release()
    if rc != 0:
        raise PoolError(f"{binding.spec.where}: transfer without SFTP failed (cat exited {rc})", kind=ErrorKind.FILE)
    session.send(msgs.reply(msgs.Reply.DONE, op_id, msgs.Done(lease.hit, lease.entry.id, "cat")))
