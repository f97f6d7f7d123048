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
import signal
import socket
import struct
import sys
import threading
import time
from typing import IO, Any, Optional

import paramiko

from .._client import check_pool_dir
from ..pool import Pool
from ..ssh.connect import Connector
from ..ssh.transport import PooledTransport
from ..wire import frames
from .jump import JumpOpener
from .maintenance import Maintainer
from .session import Session

log = logging.getLogger("pooled_ssh.daemon")

LOCK_NAME = f"daemon-v{frames.PROTOCOL_VERSION}.lock"
PID_NAME = "daemon.pid"
LOG_NAME = "daemon.log"
MAX_CLIENTS = 1024


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


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
        self.stopping = threading.Event()
        self.started = time.time()
        self._clients = 0
        self._clients_lock = threading.Lock()
        self.last_busy = time.monotonic()
        self.requests = 0
        self._listener: Optional[socket.socket] = None
        self._lock_file: Optional[IO[str]] = None

    def client_count(self) -> int:
        with self._clients_lock:
            return self._clients

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
                 frames.PROTOCOL_VERSION, paramiko.__version__)
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
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                raise
            self._accept(conn)

    def _accept(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid != os.getuid():
            log.warning("refused a client with uid %d (we serve only uid %d)", uid, os.getuid())
            conn.close()
            return
        with self._clients_lock:
            if self._clients >= MAX_CLIENTS:
                conn.close()
                log.warning("refused a client: %d clients already", MAX_CLIENTS)
                return
            self._clients += 1
            self.last_busy = time.monotonic()
        conn.settimeout(None)
        threading.Thread(target=self._serve_client, args=(conn,), name="client", daemon=True).start()

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            Session(self, conn).run()
        finally:
            with self._clients_lock:
                self._clients -= 1
                self.last_busy = time.monotonic()

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
