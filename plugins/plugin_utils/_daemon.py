# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool daemon: one long-lived process per controller user and pool directory.

Ansible forks a worker for every task, so transports kept in a worker die with it. The
daemon keeps them instead and runs commands and transfers for the workers, which reach it
over a UNIX socket in a directory only its owner can enter and are served only when their
uid is the daemon's own (``SO_PEERCRED``).

Started by :mod:`._client` as a fresh interpreter (never a fork of a worker: Paramiko's
threads do not survive ``fork``). Does not import Ansible.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import select
import shlex
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import paramiko

from . import _protocol as proto
from ._client import check_pool_dir
from ._pool import Lease, Pool, PoolError, PoolKey, PoolSettings
from ._ssh import CHANNEL_TIMEOUT, Connector

log = logging.getLogger("pooled_ssh.daemon")

LOCK_NAME = f"daemon-v{proto.PROTOCOL_VERSION}.lock"
PID_NAME = "daemon.pid"
LOG_NAME = "daemon.log"
MAX_CLIENTS = 1024
#: How long a connected worker may stay silent between requests before we drop it.
CLIENT_IDLE = 3600.0
#: How long a new client has to say hello: one that connects and stalls is dropped after this.
HELLO_TIMEOUT = 10.0
SFTP_WINDOW = 8 * 1024 * 1024
SFTP_PACKET = 32768
#: Spec fields that decide who we authenticate as and whom we trust: part of the pool key's fingerprint.
#: A transport accepted without verification (auto-add, nothing recorded) is never handed to a stricter
#: request, a rewritten key file or another agent never reuses the old login.
IDENTITY_FIELDS = (
    "addr", "password", "private_key_file", "private_key_passphrase", "proxy_command", "proxy_jump",
    "host_key_checking", "host_key_auto_add", "record_host_keys", "known_hosts_files", "look_for_keys",
    "default_key_files", "agent_socket", "key_digests",
)


def _lost_reason(chan: Any) -> str:
    """" (why)" when the daemon itself gave up on the channel's transport (keepalives), else ""."""
    reason = getattr(getattr(chan.get_transport(), "pooled_conn", None), "lost_reason", None)
    return f" ({reason})" if reason else ""


def _partial_name(path: str) -> str:
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


def _discard_partial(sftp: Optional[paramiko.SFTPClient], partial: str, lease: Lease) -> None:
    """Remove a partial file: locally (fetch) or, while the transport lives, remotely (put)."""
    if sftp is None:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    elif lease.conn.is_active():
        with contextlib.suppress(Exception):
            sftp.remove(partial)


#: After an error reply to a broken frame, read (and drop) at most this much of what the client
#: still sends, for at most DRAIN_SECONDS: closing a socket with unread input resets it, and
#: the client would lose the error reply that says what was wrong.
DRAIN_BYTES = proto.MAX_JSON + proto.MAX_PAYLOAD
DRAIN_SECONDS = 1.0


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


def _dumpable() -> Optional[bool]:
    """What the kernel says (PR_GET_DUMPABLE): the worker turned it off when it started us."""
    try:
        import ctypes

        return bool(ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# -- the exec fast path: a spare session channel, and exec without waiting for its reply ---------
#
# Each command costs round trips: channel open, exec request and its reply, then the command's
# input, output and exit status. OpenSSH sends the input right behind the exec request; we do
# the same, and keep one session channel opened ahead on a transport that just ran a command,
# so the next command on it skips the channel-open round trip. A spare holds one of the
# server's MaxSessions slots: it is opened only while the pool knows of two free slots, it is
# taken by the next session request on its transport before any new channel is opened (so it
# never makes the server refuse one of ours), a refused spare turns spares off for that
# transport, and an old spare is closed rather than used.

#: A spare older than this is closed, not used (the server may time idle channels out).
SPARE_MAX_AGE = 20.0
_spare_lock = threading.Lock()


def _claim_spare(ssh: Any) -> Optional[paramiko.Channel]:
    """The transport's spare session channel (waiting for one being opened), or None."""
    with _spare_lock:
        pending = getattr(ssh, "spare_pending", None)
    if pending is not None:
        pending.wait(CHANNEL_TIMEOUT)
    with _spare_lock:
        spare = getattr(ssh, "spare", None)
        ssh.spare = None
    if spare is None:
        return None
    chan, born = spare
    if chan.closed or not chan.active or time.monotonic() - born > SPARE_MAX_AGE or not ssh.is_active():
        chan.close()
        return None
    return chan


def _prime_spare(lease: Lease) -> None:
    """Open a spare session channel on the lease's transport in the background, when there is room."""
    ssh, entry = lease.conn, lease.entry
    with _spare_lock:
        if (getattr(ssh, "spare", None) is not None or getattr(ssh, "spare_pending", None) is not None
                or getattr(ssh, "spare_off", False) or entry.in_use + 2 > entry.max_channels or not entry.usable):
            return
        ready = ssh.spare_pending = threading.Event()
    threading.Thread(target=_open_spare, args=(ssh, ready), name="spare", daemon=True).start()


def _open_spare(ssh: Any, ready: threading.Event) -> None:
    chan = None
    try:
        chan = ssh.transport.open_session(window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET,
                                          timeout=CHANNEL_TIMEOUT)
    except paramiko.ChannelException:
        ssh.spare_off = True  # the server is full: no spares on this transport
    except Exception:
        pass
    finally:
        with _spare_lock:
            if chan is not None:
                ssh.spare = (chan, time.monotonic())
            ssh.spare_pending = None
        ready.set()


def _send_exec(chan: paramiko.Channel, cmd: str) -> None:
    """Send an exec request without waiting for its reply (``_exec_accepted`` reads it later)."""
    try:
        m = paramiko.Message()
        m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("exec")
        m.add_boolean(True)
        m.add_string(cmd)
        chan._event_pending()
        chan.transport._send_user_message(m)
    except AttributeError:  # pragma: no cover - a Paramiko without these internals: wait as usual
        chan.exec_command(cmd)


def _exec_accepted(chan: paramiko.Channel) -> bool:
    """Whether the server accepted the exec request: False when it refused it or the channel closed first.

    SSH messages are ordered and the server replies before the command's output, so a channel
    closed with the request unanswered never ran it. A reply slower than CHANNEL_TIMEOUT counts as
    accepted: the relay's deadlines and keepalives judge the channel from there.
    """
    if not chan.event.wait(CHANNEL_TIMEOUT):
        return True
    return bool(chan.event_ready)


class Daemon:
    def __init__(self, pool_dir: str, idle_exit: float) -> None:
        self.pool_dir = pool_dir
        self.idle_exit = idle_exit
        self.socket_path = os.path.join(pool_dir, proto.socket_name())
        self.salt = os.urandom(32)
        self.connector = Connector(pool_lease=self._jump_socket)
        self.pool = Pool(self.connector, on_event=self._event)
        self.stopping = threading.Event()
        self.started = time.time()
        self.clients = 0
        self.clients_lock = threading.Lock()
        self.last_busy = time.monotonic()
        self.requests = 0
        self._listener: Optional[socket.socket] = None
        self._lock_file: Any = None

    # -- life cycle ----------------------------------------------------------------

    def _event(self, event: str, **fields: Any) -> None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))

    def take_lock(self) -> bool:
        """Exactly one daemon per directory and version: the one holding this lock."""
        self._lock_file = open(os.path.join(self.pool_dir, LOCK_NAME), "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def publish(self) -> None:
        """Bind under a temporary name, listen, then link into place (OpenSSH's mux does the same)."""
        tmp = os.path.join(self.pool_dir, f".{os.getpid()}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)
            listener.bind(tmp)
        finally:
            os.umask(old_umask)
        listener.listen(128)
        try:
            os.link(tmp, self.socket_path)
        except FileExistsError:
            # We hold the lock, so whatever is there belongs to a daemon that died.
            os.unlink(self.socket_path)
            os.link(tmp, self.socket_path)
        os.unlink(tmp)
        self._listener = listener
        with open(os.path.join(self.pool_dir, PID_NAME), "w") as f:
            f.write(f"{os.getpid()}\n")

    def serve(self) -> int:
        check_pool_dir(self.pool_dir)
        if not self.take_lock():
            log.info("another daemon holds %s; exiting", LOCK_NAME)
            return 0
        self.publish()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log.info("started pid=%d socket=%s protocol=%d paramiko=%s", os.getpid(), self.socket_path,
                 proto.PROTOCOL_VERSION, paramiko.__version__)
        threading.Thread(target=self._maintain, name="maintain", daemon=True).start()
        assert self._listener is not None
        self._listener.settimeout(0.5)
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self._listener.accept()
                except socket.timeout:
                    continue
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.ECONNABORTED):
                        continue
                    raise
                self._accept(conn)
        finally:
            self.shutdown()
        return 0

    def _accept(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid != os.getuid():
            log.warning("refused a client with uid %d (we serve only uid %d)", uid, os.getuid())
            conn.close()
            return
        with self.clients_lock:
            if self.clients >= MAX_CLIENTS:
                conn.close()
                log.warning("refused a client: %d clients already", MAX_CLIENTS)
                return
            self.clients += 1
            self.last_busy = time.monotonic()
        conn.settimeout(None)
        threading.Thread(target=self._serve_client, args=(conn,), name="client", daemon=True).start()

    def shutdown(self) -> None:
        closed = self.pool.close_all()
        log.info("stopping: closed %d transports", closed)
        with contextlib.suppress(OSError):
            if self._listener is not None:
                self._listener.close()
            # Only remove the socket if it is still ours.
            pid_path = os.path.join(self.pool_dir, PID_NAME)
            with open(pid_path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_path)
                    os.unlink(self.socket_path)

    def _maintain(self) -> None:
        """Idle timeout, health checks, keepalives and the daemon's own idle exit."""
        while not self.stopping.wait(1.0):
            try:
                self._maintain_once()
            except Exception:
                log.exception("maintenance failed")

    def _maintain_once(self) -> None:
        _closed, due = self.pool.sweep()
        for entry in due:
            threading.Thread(target=self._health_check, args=(entry,), daemon=True).start()
        now = time.monotonic()
        for entry in self.pool.entries():
            conn = entry.conn
            settings = self._settings_of(entry)
            interval = settings.keepalive_interval
            if entry.in_use and interval > 0 and now - getattr(conn, "last_probe", 0.0) >= interval:
                conn.last_probe = now
                threading.Thread(target=self._keepalive, args=(entry, interval * settings.keepalive_max_missed),
                                 daemon=True).start()
        with self.clients_lock:
            busy = self.clients > 0
        if busy or not self.pool.is_empty():
            self.last_busy = now
        elif self.idle_exit >= 0 and now - self.last_busy >= self.idle_exit:
            log.info("held nothing for %.0fs; exiting", now - self.last_busy)
            self.stopping.set()

    def _settings_of(self, entry: Any) -> PoolSettings:
        return getattr(entry.conn, "settings", None) or PoolSettings()

    def _health_check(self, entry: Any) -> None:
        settings = self._settings_of(entry)
        ok = entry.conn.probe(max(1.0, settings.keepalive_interval * settings.keepalive_max_missed))
        self.pool.report_health(entry, ok)

    def _keepalive(self, entry: Any, timeout: float) -> None:
        if not entry.conn.probe(timeout):
            log.warning("keepalive: %s did not answer within %.0fs; closing it", entry.key.label, timeout)
            entry.conn.lost_reason = f"the server did not answer keepalives for {timeout:g}s"
            self.pool.mark_dead(entry)
            entry.conn.close()

    # -- requests ------------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        """One client's conversation: hello, then requests until it closes.

        Whatever a (same-uid) client sends, the daemon answers with an error frame or drops
        that client; it never dies, and one client never blocks another (a thread each, a
        deadline for the hello, bounded frames).
        """
        try:
            # A client that connects and says nothing (or half a header) is dropped at a deadline.
            conn.settimeout(HELLO_TIMEOUT)
            msg, _ = proto.recv_frame(conn)
            if msg.get("op") != "hello" or msg.get("version") != proto.PROTOCOL_VERSION:
                proto.send_frame(conn, proto.error_reply(
                    "protocol", f"expected hello for protocol {proto.PROTOCOL_VERSION}, got "
                    f"op {str(msg.get('op'))[:40]!r} version {str(msg.get('version'))[:20]!r}"))
                _drain_before_close(conn)
                return
            proto.send_frame(conn, {"t": "hello", "version": proto.PROTOCOL_VERSION, "pid": os.getpid()})
            conn.settimeout(CLIENT_IDLE)
            while not self.stopping.is_set():
                msg, payload = proto.recv_frame(conn)
                self.requests += 1
                op = str(msg.get("op"))[:40]
                handler = self.OPS.get(op)
                if handler is None:
                    # Also the answer to a frame out of order ("stdin" with no command running).
                    proto.send_frame(conn, proto.error_reply("protocol", f"unknown op {op!r}"))
                    continue
                problem = check_request(op, msg)
                if problem:
                    log.warning("malformed %s request: %s", op, problem)
                    proto.send_frame(conn, proto.error_reply("protocol", f"malformed {op} request: {problem}"))
                    continue
                try:
                    handler(self, conn, msg, payload)
                except PoolError as e:
                    proto.send_frame(conn, proto.error_reply(e.kind, str(e)))
                except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
                    log.warning("malformed %s request", op, exc_info=True)
                    proto.send_frame(conn, proto.error_reply("protocol", f"malformed request: {e!r}"[:200]))
                except (OSError, proto.ProtocolError):
                    raise
                except Exception as e:
                    # A bug, not the client's fault: say so, and end this conversation only.
                    log.exception("unexpected error serving %s", op)
                    proto.send_frame(conn, proto.error_reply(
                        "internal", f"pool daemon error in {op}: {e!r}"[:200] + f"; see {LOG_NAME}"))
                    return
        except proto.PeerClosed:
            pass
        except proto.ProtocolError as e:
            log.warning("protocol error from a client: %s", e)
            with contextlib.suppress(OSError):
                proto.send_frame(conn, proto.error_reply("protocol", str(e)))
                _drain_before_close(conn)
        except (OSError, socket.timeout):
            pass
        except Exception:
            log.exception("unexpected error serving a client")
        finally:
            conn.close()
            with self.clients_lock:
                self.clients -= 1
                self.last_busy = time.monotonic()

    def _key(self, spec: Dict[str, Any]) -> PoolKey:
        identity = json.dumps([spec.get(f) for f in IDENTITY_FIELDS], sort_keys=True, default=str)
        cred = hmac.new(self.salt, identity.encode(), hashlib.sha256).hexdigest()[:16]
        return PoolKey(str(spec["host"]), int(spec["port"]), str(spec["user"]), cred)

    def _lease(self, msg: Dict[str, Any]) -> Tuple[Lease, PoolSettings]:
        spec = msg["conn"]
        settings = PoolSettings.from_dict(msg.get("pool") or {})
        if spec.get("proxy_jump"):
            # The bastion's transports are pooled with the same settings (see _jump_socket).
            spec["pool_settings"] = msg.get("pool") or {}
        lease = self.pool.acquire(self._key(spec), settings, spec)
        lease.conn.settings = settings
        return lease, settings

    def _with_channel(self, msg: Dict[str, Any], opener: Callable[[Any], Any]) -> Tuple[Lease, Any]:
        """Lease a transport and open a channel on it, moving on when the server says no.

        A refused channel means the transport is full (MaxSessions): the pool learns the
        limit and hands us another slot. A dead transport is dropped and replaced. Nothing
        has run yet, so retrying is safe.
        """
        last: Optional[Exception] = None
        for _attempt in range(6):
            lease, _settings = self._lease(msg)
            try:
                return lease, opener(lease.conn)
            except paramiko.ChannelException as e:
                last = e
                lease.release(refused=True)
            except paramiko.SSHException as e:
                last = e
                if str(e) == "Unable to open channel." and lease.conn.is_active():
                    # A refused channel (MaxSessions) whose ChannelException another thread took:
                    # Paramiko keeps one "saved exception" per transport, not one per channel.
                    lease.release(refused=True)
                elif str(e) == "Timeout opening channel.":
                    # No answer to a channel open within CHANNEL_TIMEOUT: the transport is not usable.
                    lease.release(broken=True)
                elif lease.conn.is_active():
                    # The transport is fine; the server refused this request (no SFTP subsystem...).
                    lease.release()
                    spec = msg["conn"]
                    raise PoolError(f"{spec['addr']}:{spec['port']}: the server refused the request ({e})",
                                    kind="refused") from None
                else:
                    lease.release(broken=True)
            except (EOFError, OSError) as e:
                last = e
                if lease.conn.is_active():
                    # The transport is fine; the server refused this request (no SFTP subsystem...).
                    lease.release()
                    spec = msg["conn"]
                    raise PoolError(f"{spec['addr']}:{spec['port']}: the server refused the request ({e})",
                                    kind="refused") from None
                lease.release(broken=True)
        spec = msg["conn"]
        raise PoolError(f"{spec['addr']}:{spec['port']}: could not open a channel ({last}); "
                        "check sshd's MaxSessions and logs", kind="connect")

    def op_exec(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        cmd = msg["cmd"]
        pty = bool(msg.get("pty"))

        eof = bool(msg.get("eof"))
        use_spare = [True]

        def opener(ssh: Any) -> paramiko.Channel:
            chan = _claim_spare(ssh) if use_spare[0] else None
            spare = chan is not None
            if chan is None:
                chan = ssh.open_channel(CHANNEL_TIMEOUT)
            try:
                chan.settimeout(CHANNEL_TIMEOUT)
                if pty:
                    chan.get_pty(term=msg.get("term") or "vt100", width=int(msg.get("width") or 0),
                                 height=int(msg.get("height") or 0))
                chan.settimeout(None)
                # The input follows the exec request at once, as OpenSSH does; the reply is read below.
                _send_exec(chan, cmd)
                if payload:
                    chan.sendall(payload)
                if eof:
                    chan.shutdown_write()
            except OSError:
                if not chan.closed:  # closed: the exec was refused; told apart below
                    chan.close()
                    raise
            except BaseException:
                chan.close()
                raise
            chan.pooled_spare = spare
            return chan

        for _attempt in range(3):
            lease, chan = self._with_channel(msg, opener)
            if _exec_accepted(chan):
                break
            # Unanswered or refused: the command never ran, so another try is safe.
            chan.close()
            alive = lease.conn.is_active()
            lease.release(broken=not alive)
            if alive and not chan.pooled_spare:
                spec = msg["conn"]
                raise PoolError(f"{spec['addr']}:{spec['port']}: the server refused the request (exec)",
                                kind="refused")
            use_spare[0] = False  # a spare the server had closed, or a dead transport: fresh channel
        else:
            spec = msg["conn"]
            raise PoolError(f"{spec['addr']}:{spec['port']}: could not start the command", kind="connect")
        broken = False
        try:
            _prime_spare(lease)
            proto.send_frame(conn, {"t": "started", "hit": lease.hit, "transport": lease.entry.id,
                                    "waited": round(lease.waited, 6)})
            broken = self._relay(conn, chan, msg)
        finally:
            chan.close()
            lease.release(broken=broken)

    def _relay(self, conn: socket.socket, chan: paramiko.Channel, msg: Dict[str, Any]) -> bool:
        """Stream the channel to the worker and the worker's input to the channel.

        Returns True when the transport turned out to be dead.
        """
        timeout = float(msg.get("command_timeout") or 0)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        spec = msg["conn"]
        client_open = True
        while True:
            watch = [chan, conn] if client_open else [chan]
            readable, _, _ = select.select(watch, [], [], 1.0)
            while chan.recv_ready():
                data = chan.recv(65536)
                if not data:
                    break
                proto.send_frame(conn, {"t": "out"}, data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                if not data:
                    break
                proto.send_frame(conn, {"t": "err"}, data)
            if conn in readable:
                try:
                    req, data = proto.recv_frame(conn)
                except (proto.PeerClosed, OSError):
                    log.info("worker went away mid-command; closing its channel")
                    return False
                op = req.get("op")
                if op == "stdin":
                    chan.sendall(data)
                elif op == "eof":
                    chan.shutdown_write()
                elif op == "cancel":
                    client_open = False
                    return False
            if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                break
            if not chan.get_transport().is_active():
                break
            if deadline is not None and time.monotonic() > deadline:
                proto.send_frame(conn, proto.error_reply(
                    "timeout", f"{spec['addr']}:{spec['port']}: command did not finish within {timeout:g}s "
                    "(command_timeout); it may still be running on the host"))
                return False
        while chan.recv_ready():
            proto.send_frame(conn, {"t": "out"}, chan.recv(65536))
        while chan.recv_stderr_ready():
            proto.send_frame(conn, {"t": "err"}, chan.recv_stderr(65536))
        if chan.exit_status_ready() and chan.exit_status != -1:
            proto.send_frame(conn, {"t": "exit", "rc": chan.exit_status})
            return False
        alive = chan.get_transport().is_active()
        proto.send_frame(conn, proto.error_reply(
            "unknown_outcome",
            f"{spec['addr']}:{spec['port']}: the SSH {'session' if alive else 'connection'} was lost while the "
            "command ran" + _lost_reason(chan) + "; its outcome is unknown and it was not re-run: check the host "
            "before retrying"))
        return not alive

    def _sftp(self, ssh: Any) -> paramiko.SFTPClient:
        return paramiko.SFTPClient.from_transport(ssh.transport, window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET)

    def _transfer(self, conn: socket.socket, msg: Dict[str, Any], put: bool) -> None:
        """Copy a file with SFTP, to a temporary name first, renamed into place once complete.

        A transfer cut midway never leaves a partial file under the destination's name: the
        partial one has a ``.pooled-*.part`` name and is removed when the connection still allows.
        """
        spec = msg["conn"]
        local, remote = msg["local"], msg["remote"]
        where = f"{spec['addr']}:{spec['port']}"
        try:
            lease, sftp = self._with_channel(msg, self._sftp)
        except PoolError as e:
            if e.kind != "refused":
                raise
            log.info("%s has no SFTP subsystem; transferring through cat", where)
            self._transfer_with_cat(conn, msg, put)
            return
        broken = False
        partial = _partial_name(remote if put else local)
        try:
            if put:
                sftp.put(local, partial, confirm=True)
                _sftp_replace(sftp, partial, remote)
            else:
                sftp.get(remote, partial)
                os.replace(partial, local)
        except FileNotFoundError as e:
            _discard_partial(sftp if put else None, partial, lease)
            if put:
                what = f"local file {local}" if e.filename == local else f"remote directory of {remote}"
            else:
                what = f"remote file {remote}" if e.filename != partial else f"local directory of {local}"
            raise PoolError(f"{where}: {what} does not exist", kind="file") from None
        except PermissionError:
            _discard_partial(sftp if put else None, partial, lease)
            raise PoolError(f"{where}: permission denied on {remote if put else local}", kind="file") from None
        except (EOFError, paramiko.SSHException, OSError) as e:
            broken = not lease.conn.is_active()
            _discard_partial(sftp if put else None, partial, lease)
            raise PoolError(f"{where}: transfer of {local if put else remote} failed ({str(e) or type(e).__name__})"
                            f"{'; the connection was lost' if broken else ''}; no partial file was left at "
                            f"{remote if put else local}", kind="connect" if broken else "file") from None
        finally:
            with contextlib.suppress(Exception):
                sftp.close()
            lease.release(broken=broken)
        proto.send_frame(conn, {"t": "done", "hit": lease.hit, "transport": lease.entry.id})

    def _transfer_with_cat(self, conn: socket.socket, msg: Dict[str, Any], put: bool) -> None:
        """For servers without an SFTP subsystem: stream the file through ``cat``.

        As with SFTP, the file lands under a temporary name and is renamed once its size is
        right: a cut connection gives ``cat`` an early end of input, not an error.
        """
        local, remote = msg["local"], msg["remote"]
        spec = msg["conn"]
        if put:
            size = os.path.getsize(local)
            tmp, dest = shlex.quote(_partial_name(remote)), shlex.quote(remote)
            cmd = (f"cat > {tmp} && test $(wc -c < {tmp}) -eq {size} && mv -f {tmp} {dest} "
                   f"|| {{ rm -f {tmp}; exit 1; }}")
        else:
            cmd = f"cat {shlex.quote(remote)}"

        def opener(ssh: Any) -> paramiko.Channel:
            chan = ssh.open_channel(CHANNEL_TIMEOUT)
            chan.exec_command(cmd)
            return chan

        lease, chan = self._with_channel(msg, opener)
        partial = _partial_name(local)
        try:
            if put:
                with open(local, "rb") as f:
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
                os.replace(partial, local)
        finally:
            if not put:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
            chan.close()
            lease.release()
        if rc != 0:
            raise PoolError(f"{spec['addr']}:{spec['port']}: transfer without SFTP failed (cat exited {rc})",
                            kind="file")
        proto.send_frame(conn, {"t": "done", "hit": lease.hit, "transport": lease.entry.id, "via": "cat"})

    def op_put(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        self._transfer(conn, msg, put=True)

    def op_fetch(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        self._transfer(conn, msg, put=False)

    def op_evict(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        host, port, user = msg.get("host"), msg.get("port"), msg.get("user")

        def match(key: PoolKey) -> bool:
            return ((host is None or key.host == host) and (port is None or key.port == int(port))
                    and (user is None or key.user == user))

        closed = self.pool.evict(match)
        self.connector.forget_auth_failures(match)
        proto.send_frame(conn, {"t": "ok", "closed": closed})

    def op_stats(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        proto.send_frame(conn, {"t": "stats", **self.pool.stats()})

    def op_status(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        with self.clients_lock:
            clients = self.clients
        proto.send_frame(conn, {
            "t": "status",
            "daemon": {"pid": os.getpid(), "protocol": proto.PROTOCOL_VERSION, "socket": self.socket_path,
                       "started": self.started, "uptime": round(time.time() - self.started, 3),
                       "clients": clients, "requests": self.requests, "paramiko": paramiko.__version__,
                       "threads": threading.active_count(), "dumpable": _dumpable()},
            "stats": self.pool.stats(),
            "transports": self.pool.snapshot(),
        })

    def op_stop(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        proto.send_frame(conn, {"t": "ok"})
        self.stopping.set()

    def op_ping(self, conn: socket.socket, msg: Dict[str, Any], payload: bytes) -> None:
        proto.send_frame(conn, {"t": "pong"})

    OPS: Dict[str, Callable[..., None]] = {
        "exec": op_exec,
        "put": op_put,
        "fetch": op_fetch,
        "evict": op_evict,
        "stats": op_stats,
        "status": op_status,
        "stop": op_stop,
        "ping": op_ping,
    }

    # -- jump hosts --------------------------------------------------------------------

    def _jump_socket(self, spec: Dict[str, Any], timeout: float) -> Tuple[Any, Any]:
        """A ``direct-tcpip`` channel to the target through a pooled transport to its jump host.

        The bastion's transport comes from this same pool (key: the hop's name, port and
        user, with the target's credentials unless ssh_config gave the hop its own key),
        so many targets behind one bastion share one login to it. The lease holds one of
        the bastion transport's channel slots for as long as the target transport lives:
        ``SshConn.close`` releases it. Chains (``a,b``) recurse: ``b`` is reached through ``a``.
        """
        hops = list(spec["proxy_jump"])
        hop = hops[-1]
        # The hop authenticates with its own credentials only (the worker put them in the hop): never
        # with the target's password or passphrase, which a bastion offering passwords would receive.
        bastion = {k: v for k, v in spec.items() if k not in _TARGET_ONLY}
        bastion.update(host=hop["host"], addr=hop["addr"], port=int(hop["port"]), user=hop["user"],
                       password=hop.get("password"), agent_socket=hop.get("agent_socket"))
        if hop.get("private_key_file"):
            bastion["private_key_file"] = hop["private_key_file"]
        if len(hops) > 1:
            bastion["proxy_jump"] = hops[:-1]
        settings = PoolSettings.from_dict(spec.get("pool_settings") or {})
        key = self._key(bastion)
        lease = self.pool.acquire(key, settings, bastion)
        lease.conn.settings = settings
        target = f"{spec['addr']}:{spec['port']}"
        try:
            chan = lease.conn.transport.open_channel(
                "direct-tcpip", dest_addr=(spec["addr"], int(spec["port"])), src_addr=("127.0.0.1", 0),
                timeout=timeout)
        except paramiko.ChannelException as e:
            lease.release()
            raise PoolError(f"{target}: the jump host {key.label} refused to connect to it ({e.text or e}); "
                            "check that the target is reachable from the jump host and that its sshd has "
                            "AllowTcpForwarding yes", kind="connect") from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            lease.release(broken=not lease.conn.is_active())
            raise PoolError(f"{target}: no channel through the jump host {key.label} within {timeout:g}s ({e}); "
                            "raise timeout or check the jump host", kind="connect") from None
        log.info("%s: tunnelled through jump host %s (transport %d, %s)", target, key.label, lease.entry.id,
                 "reused" if lease.hit else "new")
        return chan, lease


#: Spec fields that belong to the target alone: a jump host never inherits them.
_TARGET_ONLY = ("proxy_jump", "proxy_command", "password", "private_key_passphrase", "agent_socket")

#: Fields of a request's "conn" (connection spec) and the types the daemon accepts for them.
_SPEC_TYPES: Dict[str, Tuple[type, ...]] = {
    "host": (str,), "addr": (str,), "user": (str,), "password": (str, type(None)),
    "private_key_file": (str, type(None)), "private_key_passphrase": (str, type(None)),
    "proxy_command": (str, type(None)), "agent_socket": (str, type(None)), "proxy_jump": (list, type(None)),
    "known_hosts_files": (list, type(None)), "default_key_files": (list, type(None)),
    "key_digests": (dict, type(None)),
    "timeout": (int, float, type(None)), "banner_timeout": (int, float, type(None)),
    "max_handshakes_per_address": (int, type(None)), "max_auth_attempts": (int, type(None)),
}
_OPS_WITH_CONN = ("exec", "put", "fetch")


def check_request(op: str, msg: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the shape of a request (None: nothing); the handlers trust the shape."""
    if op not in _OPS_WITH_CONN:
        return None
    spec = msg.get("conn")
    if not isinstance(spec, dict):
        return "conn must be an object"
    for name in ("host", "addr", "port", "user"):
        if name not in spec:
            return f"conn.{name} is missing"
    port = spec["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return "conn.port must be a port number"
    for name, types in _SPEC_TYPES.items():
        if name in spec and (isinstance(spec[name], bool) or not isinstance(spec[name], types)):
            return f"conn.{name} has the wrong type"
    for name in ("timeout", "banner_timeout"):
        value = spec.get(name)
        if value is not None and not 0 <= value <= 86400:
            return f"conn.{name} is out of range"
    if msg.get("pool") is not None and not isinstance(msg.get("pool"), dict):
        return "pool must be an object"
    if op == "exec" and not isinstance(msg.get("cmd"), str):
        return "cmd must be a string"
    if op in ("put", "fetch") and not (isinstance(msg.get("local"), str) and isinstance(msg.get("remote"), str)):
        return "local and remote must be strings"
    return None


def setup_logging(pool_dir: str, level: str) -> None:
    handler = logging.handlers.RotatingFileHandler(
        os.path.join(pool_dir, LOG_NAME), maxBytes=1024 * 1024, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Paramiko's DEBUG output includes key fingerprints and packet dumps: never below INFO.
    logging.getLogger("paramiko").setLevel(max(logging.INFO, root.level))


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="pooled_ssh-daemon")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--idle-exit", type=float, default=60.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    os.umask(0o077)
    setup_logging(args.dir, args.log_level)
    try:
        return Daemon(args.dir, args.idle_exit).serve()
    except Exception:
        log.exception("daemon failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
