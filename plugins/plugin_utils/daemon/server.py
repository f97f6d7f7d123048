# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool daemon: one long-lived process per controller user and pool directory.

Ansible forks a worker for every task, so transports kept in a worker die with it. The
daemon keeps them instead and runs commands and transfers for the workers, which reach it
over a UNIX socket in a directory only its owner can enter and are served only when their
uid is the daemon's own (``SO_PEERCRED``). This module is its life cycle: the lock, the
published socket, the accept loop; each client's conversation is a :class:`.session.Session`.

Started by :mod:`.._client` as a fresh interpreter (never a fork of a worker: Paramiko's
threads do not survive ``fork``). Does not import Ansible.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import logging.handlers
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from typing import IO, Any, List, Optional

from .._client import check_pool_dir
from ..errors import ErrorKind
from ..pool.core import Pool
from ..ssh.connect import Connector
from ..ssh.paramiko_guard import IMPORT_ERROR as PARAMIKO_IMPORT_ERROR
from ..ssh.paramiko_guard import missing_text, paramiko
from ..ssh.paramiko_text import ParamikoLogFilter
from ..ssh.transport import PooledTransport
from ..wire import frames
from ..wire import messages as msgs
from .jump import JumpOpener
from .maintenance import Maintainer
from .session import Session
from .warm import Warmer

log = logging.getLogger("pooled_ssh.daemon")

LOCK_NAME = f"daemon-v{frames.PROTOCOL_VERSION}.lock"
PID_NAME = frames.pid_name()
LOG_NAME = "daemon.log"
MAX_CLIENTS = 1024
#: Descriptors kept for everything but transports and clients (log, listener, files, SFTP...).
FD_RESERVE = 64
#: Worst case per connected worker: its socket, and a running command's channel pipe (2) and selector.
FD_PER_CLIENT = 4
#: accept() errors that say "not now" (descriptors, buffers, memory), not "never".
TRANSIENT_ACCEPT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Idle transports closed each time accept() runs out of descriptors.
SHED_ON_EMFILE = 16
#: Exit status of a daemon that could not start (its log, or stderr, says why in one line).
START_FAILED = 2
#: How long a second daemon waits for a stopping one to let go of the lock.
LOCK_WAIT = 10.0


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (workers often run with 1024); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def budget(limit: int) -> tuple[int, int]:
    """(clients, transports) the descriptor limit allows, each at least 8."""
    clients = max(8, min(MAX_CLIENTS, (limit - FD_RESERVE) // (2 * FD_PER_CLIENT)))
    transports = max(8, limit - FD_RESERVE - FD_PER_CLIENT * clients)
    return clients, transports


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Daemon:
    def __init__(self, pool_dir: str, idle_exit: float) -> None:
        self.pool_dir = pool_dir
        self.idle_exit = idle_exit
        self.socket_path = os.path.join(pool_dir, frames.socket_name())
        self.salt = os.urandom(32)
        jump = JumpOpener(self.salt)
        self.connector = Connector(tunnel=jump)
        self.pool: Pool[PooledTransport] = Pool(self.connector, on_event=self._event)
        jump.attach(self.pool)
        self.warmer = Warmer()
        self.stopping = threading.Event()
        #: Set by maintenance when the daemon has held nothing for idle_exit; the accept loop acts on it.
        self.idle_exit_due = threading.Event()
        self.started = time.time()
        self._clients = 0
        self._clients_lock = threading.Lock()
        self.last_busy = time.monotonic()
        self.requests = 0
        self._listener: Optional[socket.socket] = None
        self._lock_file: Optional[IO[str]] = None
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_clients, self.pool.max_transports = budget(self.fd_limit)

    def client_count(self) -> int:
        with self._clients_lock:
            return self._clients

    # -- life cycle ----------------------------------------------------------------

    def _event(self, event: str, **fields: Any) -> None:
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))

    def take_lock(self) -> bool:
        """Exactly one daemon per directory and version: the one holding this lock."""
        self._lock_file = open(os.path.join(self.pool_dir, LOCK_NAME), "a")  # noqa: SIM115 - held for life
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                # A daemon that serves keeps its socket; one that is leaving removed it first and
                # lets go of the lock soon: wait for that one, so the worker that started us is served.
                if os.path.exists(self.socket_path) or time.monotonic() > deadline:
                    return False
                time.sleep(0.02)

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
        pid_path = os.path.join(self.pool_dir, PID_NAME)
        try:
            # The pid file first: a full disk or a read-only directory fails here, before any worker
            # can find a socket that nobody will serve.
            with open(pid_path, "w") as f:
                f.write(f"{os.getpid()}\n")
            try:
                os.link(tmp, self.socket_path)
            except FileExistsError:
                # We hold the lock, so whatever is there belongs to a daemon that died.
                os.unlink(self.socket_path)
                os.link(tmp, self.socket_path)
        except OSError:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(pid_path)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._listener = listener

    def serve(self) -> int:
        inherited = self.fd_limit
        self.fd_limit = raise_fd_limit()
        self.max_clients, self.pool.max_transports = budget(self.fd_limit)
        check_pool_dir(self.pool_dir)
        if not self.take_lock():
            log.info("another daemon holds %s; exiting", LOCK_NAME)
            return 0
        try:
            self.publish()
        except OSError as e:
            log.error(
                "cannot publish the pool socket in %s (%s): free space on its file system or make it writable",
                self.pool_dir,
                e.strerror or e,
            )
            return START_FAILED
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log.info(
            "started pid=%d socket=%s protocol=%d paramiko=%s",
            os.getpid(),
            self.socket_path,
            frames.PROTOCOL_VERSION,
            paramiko.__version__,
        )
        log.info(
            "descriptor limit %d (inherited %d): up to %d clients and %d transports",
            self.fd_limit,
            inherited,
            self.max_clients,
            self.pool.max_transports,
        )
        threading.Thread(target=Maintainer(self).run, name="maintain", daemon=True).start()
        try:
            self._accept_loop()
        finally:
            self.shutdown()
        return 0

    def _accept_loop(self) -> None:
        listener = self._listener
        if listener is None:
            raise RuntimeError("serve() before publish()")
        listener.settimeout(0.5)
        while not self.stopping.is_set():
            if self.idle_exit_due.is_set() and self._leave_if_idle():
                break
            try:
                conn, _addr = listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                if e.errno in TRANSIENT_ACCEPT:
                    shed = self.pool.shed_idle(SHED_ON_EMFILE)
                    log.warning("accept: %s; closed %d idle transports, going on", os.strerror(e.errno), shed)
                    self.stopping.wait(0.05)
                    continue
                raise
            try:
                self._accept(conn)
            except OSError as e:
                # A thread could not start, or the client left at once: that client only.
                log.warning("could not take a client: %s", e)
                with contextlib.suppress(OSError):
                    conn.close()

    def _leave_if_idle(self) -> bool:
        """Stop when still idle. Run by the accept loop, which alone takes clients: no session can
        start after this check, and workers that connect from now on are answered "shutdown" and
        connect again (see :meth:`shutdown`), so none is dropped mid-request."""
        self.idle_exit_due.clear()
        with self._clients_lock:
            idle_for = time.monotonic() - self.last_busy
            if self._clients or not self.pool.is_empty() or idle_for < self.idle_exit:
                return False
            self.stopping.set()
        log.info("held nothing for %.0fs; exiting", idle_for)
        return True

    def _accept(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid != os.getuid():
            log.warning("refused a client with uid %d (we serve only uid %d)", uid, os.getuid())
            conn.close()
            return
        with self._clients_lock:
            busy = self._clients >= self.max_clients
            if not busy:
                self._clients += 1
                self.last_busy = time.monotonic()
        if busy:
            log.warning("refused a client: %d clients already", self.max_clients)
            _answer_and_close(
                conn,
                ErrorKind.BUSY,
                f"the pool daemon serves {self.max_clients} workers already (what its descriptor "
                f"limit of {self.fd_limit} allows): use fewer forks or raise the limit (ulimit -n)",
            )
            return
        conn.settimeout(None)
        try:
            threading.Thread(target=self._serve_client, args=(conn,), name="client", daemon=True).start()
        except BaseException:
            with self._clients_lock:
                self._clients -= 1
            raise

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            Session(self, conn).run()
        finally:
            with self._clients_lock:
                self._clients -= 1
                self.last_busy = time.monotonic()

    def shutdown(self) -> None:
        """Leave so that no worker is lost: unlink the socket first (new workers start the next
        daemon), answer what waits in the backlog with "shutdown" (they connect again), close the
        listener, let go of the lock (the next daemon may start), then close the transports."""
        with contextlib.suppress(OSError):
            # Only remove the socket if it is still ours.
            pid_path = os.path.join(self.pool_dir, PID_NAME)
            with open(pid_path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.socket_path)
                    os.unlink(pid_path)
        if self._listener is not None:
            self._listener.setblocking(False)
            answered = 0
            while True:
                try:
                    conn, _addr = self._listener.accept()
                except OSError:
                    break
                answered += 1
                _answer_and_close(conn, ErrorKind.SHUTDOWN, "the pool daemon is stopping: connect again")
            with contextlib.suppress(OSError):
                self._listener.close()
            if answered:
                log.info("stopping: told %d waiting clients to connect again", answered)
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.close()
        closed = self.pool.close_all()
        log.info("stopping: closed %d transports", closed)


def _answer_and_close(conn: socket.socket, kind: ErrorKind, message: str) -> None:
    """One error frame instead of a reset, so the worker knows what happened."""
    with contextlib.suppress(OSError):
        conn.setblocking(True)
        conn.settimeout(1.0)
        frames.send_frame(conn, msgs.error(None, kind, message))
        conn.shutdown(socket.SHUT_WR)
        conn.recv(65536)  # its hello, so that closing does not reset the connection
    with contextlib.suppress(OSError):
        conn.close()


def setup_logging(pool_dir: str, level: str) -> None:
    handler = logging.handlers.RotatingFileHandler(
        os.path.join(pool_dir, LOG_NAME), maxBytes=1024 * 1024, backupCount=3
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ParamikoLogFilter(debug=level.lower() == "debug"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Paramiko's DEBUG output includes key fingerprints and packet dumps: never below INFO.
    logging.getLogger("paramiko").setLevel(max(logging.INFO, root.level))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pooled_ssh-daemon")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--idle-exit", type=float, default=60.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if PARAMIKO_IMPORT_ERROR is not None:  # the worker that started it shows this line (the daemon's stderr)
        print(missing_text(PARAMIKO_IMPORT_ERROR), file=sys.stderr)
        return 2
    os.umask(0o077)
    try:
        setup_logging(args.dir, args.log_level)
    except OSError as e:
        # No log to write to (a full disk, a read-only directory): one line on stderr, which the
        # worker that started us quotes; never a traceback.
        with contextlib.suppress(OSError):
            print(
                f"pooled_ssh daemon: cannot write its log {os.path.join(args.dir, LOG_NAME)} ({e.strerror or e}): "
                "free space on that file system or set pool_dir to a writable directory",
                file=sys.stderr,
                flush=True,
            )
        return START_FAILED
    try:
        return Daemon(args.dir, args.idle_exit).serve()
    except Exception:
        log.exception("daemon failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
