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
SFTP_WINDOW = 8 * 1024 * 1024
SFTP_PACKET = 32768
#: Spec fields that decide who we are on the server: part of the pool key's fingerprint.
IDENTITY_FIELDS = (
    "addr", "password", "private_key_file", "private_key_passphrase", "proxy_command", "proxy_jump",
    "host_key_checking", "known_hosts_files", "look_for_keys",
)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


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
            self.pool.mark_dead(entry)
            entry.conn.close()

    # -- requests ------------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            msg, _ = proto.recv_frame(conn)
            if msg.get("op") != "hello" or msg.get("version") != proto.PROTOCOL_VERSION:
                proto.send_frame(conn, proto.error_reply(
                    "protocol", f"expected hello for protocol {proto.PROTOCOL_VERSION}"))
                return
            proto.send_frame(conn, {"t": "hello", "version": proto.PROTOCOL_VERSION, "pid": os.getpid()})
            conn.settimeout(CLIENT_IDLE)
            while not self.stopping.is_set():
                msg, payload = proto.recv_frame(conn)
                self.requests += 1
                handler = self.OPS.get(str(msg.get("op")))
                if handler is None:
                    proto.send_frame(conn, proto.error_reply("protocol", f"unknown op {str(msg.get('op'))[:40]!r}"))
                    continue
                try:
                    handler(self, conn, msg, payload)
                except PoolError as e:
                    proto.send_frame(conn, proto.error_reply(e.kind, str(e)))
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("malformed %s request", str(msg.get("op"))[:40], exc_info=True)
                    proto.send_frame(conn, proto.error_reply("protocol", f"malformed request: {e!r}"[:200]))
        except proto.PeerClosed:
            pass
        except proto.ProtocolError as e:
            log.warning("protocol error from a client: %s", e)
            with contextlib.suppress(OSError):
                proto.send_frame(conn, proto.error_reply("protocol", str(e)))
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
            except (paramiko.SSHException, EOFError, OSError) as e:
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

        def opener(ssh: Any) -> paramiko.Channel:
            chan = ssh.open_channel(CHANNEL_TIMEOUT)
            try:
                chan.settimeout(CHANNEL_TIMEOUT)
                if pty:
                    chan.get_pty(term=msg.get("term") or "vt100", width=int(msg.get("width") or 0),
                                 height=int(msg.get("height") or 0))
                chan.exec_command(cmd)
                chan.settimeout(None)
            except BaseException:
                chan.close()
                raise
            return chan

        lease, chan = self._with_channel(msg, opener)
        broken = False
        try:
            proto.send_frame(conn, {"t": "started", "hit": lease.hit, "transport": lease.entry.id,
                                    "waited": round(lease.waited, 6)})
            if payload:
                chan.sendall(payload)
            if msg.get("eof"):
                chan.shutdown_write()
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
            "command ran; its outcome is unknown and it was not re-run: check the host before retrying"))
        return not alive

    def _sftp(self, ssh: Any) -> paramiko.SFTPClient:
        return paramiko.SFTPClient.from_transport(ssh.transport, window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET)

    def _transfer(self, conn: socket.socket, msg: Dict[str, Any], put: bool) -> None:
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
        try:
            if put:
                sftp.put(local, remote, confirm=True)
            else:
                sftp.get(remote, local)
        except FileNotFoundError as e:
            raise PoolError(f"{where}: {'local' if put else 'remote'} file {e.filename or (local if put else remote)} "
                            "does not exist", kind="file") from None
        except PermissionError as e:
            raise PoolError(f"{where}: permission denied on {e.filename or (remote if put else local)}",
                            kind="file") from None
        except (EOFError, paramiko.SSHException, OSError) as e:
            broken = not lease.conn.is_active()
            raise PoolError(f"{where}: transfer of {local if put else remote} failed ({e})",
                            kind="connect" if broken else "file") from None
        finally:
            sftp.close()
            lease.release(broken=broken)
        proto.send_frame(conn, {"t": "done", "hit": lease.hit, "transport": lease.entry.id})

    def _transfer_with_cat(self, conn: socket.socket, msg: Dict[str, Any], put: bool) -> None:
        """For servers without an SFTP subsystem: stream the file through ``cat``."""
        local, remote = msg["local"], msg["remote"]
        spec = msg["conn"]
        cmd = f"cat > {shlex.quote(remote)}" if put else f"cat {shlex.quote(remote)}"

        def opener(ssh: Any) -> paramiko.Channel:
            chan = ssh.open_channel(CHANNEL_TIMEOUT)
            chan.exec_command(cmd)
            return chan

        lease, chan = self._with_channel(msg, opener)
        try:
            if put:
                with open(local, "rb") as f:
                    while True:
                        block = f.read(1024 * 1024)
                        if not block:
                            break
                        chan.sendall(block)
                chan.shutdown_write()
                chan.recv_exit_status()
            else:
                with open(local, "wb") as f:
                    while True:
                        block = chan.recv(1024 * 1024)
                        if not block:
                            break
                        f.write(block)
            rc = chan.recv_exit_status()
        finally:
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
                       "threads": threading.active_count()},
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
        bastion = {k: v for k, v in spec.items() if k not in ("proxy_jump", "proxy_command")}
        bastion.update(host=hop["host"], addr=hop["addr"], port=int(hop["port"]), user=hop["user"])
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
