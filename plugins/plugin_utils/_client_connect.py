# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to the collection: how a worker finds its pool daemon, starting one if none answers.

For :class:`._client.PoolClient` (and the CLI and tests, through :mod:`._client`): the pool
directory is opened by descriptor with every ancestor checked (:mod:`pooldir`), the socket is
connected through that descriptor and its listener's uid read with ``SO_PEERCRED`` before a byte
is sent, and a daemon is started detached, with ``-I`` and an allow-listed environment. The hello
and everything after it are :mod:`._client`'s. Does not import Ansible.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from . import pooldir
from .errors import PoolUnavailable
from .wire import frames as proto

#: Where the pool lives unless configured otherwise.
DEFAULT_POOL_DIR = pooldir.DEFAULT
#: Longest pause between looks for a starting daemon's socket (a start takes ~0.3 s).
SPAWN_POLL_MAX = 0.02
#: Longest time we wait for a daemon we started to accept connections.
SPAWN_TIMEOUT = 20.0
MAX_SOCKET_PATH = pooldir.MAX_SOCKET_PATH
#: The only variables a daemon inherits from the worker that starts it (it outlives that worker and
#: serves every later one, so nothing of one playbook's environment, secrets included, may stay in it).
DAEMON_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "LD_LIBRARY_PATH")
DAEMON_ENV_PREFIXES = ("LC_",)

# Launches the daemon in a fresh interpreter started with -I (no PYTHON* variables, no user site, no
# current directory on the path): core dumps off first, then the worker's import path (so Paramiko is
# found where the worker found it), then bootstrap.py imports this directory as the package
# healer_pooled_ssh, whatever the collection's install layout is.
_BOOT = (
    "import ctypes, importlib.util, json, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)\n"  # PR_SET_DUMPABLE, 0
    "sys.path.extend(p for p in json.loads(sys.argv[2]) if p not in sys.path)\n"
    "spec = importlib.util.spec_from_file_location('_pooled_ssh_private', sys.argv[1])\n"
    "boot = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(boot)\n"
    "sys.exit(boot.boot(sys.argv[3:]))\n"
)


def pool_dir_path(configured: Optional[str]) -> str:
    return pooldir.resolve(configured)


def check_pool_dir(path: str) -> None:
    """Refuse a pool directory that is unsafe to use (see :func:`pooldir.open_pool_dir`)."""
    try:
        os.close(pooldir.open_pool_dir(path, create=False))
    except pooldir.PoolDirError as e:
        raise PoolUnavailable(str(e)) from None


def socket_path(pool_dir: str) -> str:
    path = os.path.join(pool_dir, proto.socket_name())
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise PoolUnavailable(
            f"pool socket path {path} is longer than {MAX_SOCKET_PATH} bytes: set pool_dir to a shorter directory"
        )
    return path


def peer_credentials(sock: socket.socket) -> Tuple[int, int]:
    """The (pid, uid) of the process on the other end of a connected UNIX socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _connect(fd: int, pool_dir: str) -> socket.socket:
    """Connect to the socket in the directory open as ``fd``; refuse a listener of another uid
    before a byte is sent (a directory swapped after our checks cannot redirect this path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(pooldir.fd_path(fd, proto.socket_name(), pool_dir))
        pid, uid = peer_credentials(sock)
    except BaseException:
        sock.close()
        raise
    if uid != os.getuid():
        sock.close()
        raise PoolUnavailable(
            f"pool directory {pool_dir}: the process listening on its socket (pid {pid}) runs as "
            f"uid {uid}, not as you ({os.getuid()}); it was sent nothing: find out who runs it, "
            "or set pool_dir"
        )
    return sock


def _boot_file() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")


def daemon_environ(environ: Mapping[str, str]) -> Dict[str, str]:
    """The allow-listed environment a daemon starts with."""
    return {k: v for k, v in environ.items() if k in DAEMON_ENV or k.startswith(DAEMON_ENV_PREFIXES)}


def _import_path() -> List[str]:
    """The worker's import path, without the entries that depend on where it was started."""
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]


def spawn_daemon(
    pool_dir: str, idle_exit: float, log_level: str = "info", python: Optional[str] = None, dir_fd: Optional[int] = None
) -> subprocess.Popen[bytes]:
    """Start a daemon detached from the caller (own session, no inherited descriptors, a clean environment)."""
    fd = pooldir.open_pool_dir(pool_dir) if dir_fd is None else dir_fd
    try:
        err = pooldir.open_file(fd, pooldir.STDERR_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    finally:
        if dir_fd is None:
            os.close(fd)
    try:
        return subprocess.Popen(
            [
                python or sys.executable,
                "-I",
                "-c",
                _BOOT,
                _boot_file(),
                json.dumps(_import_path()),
                "--dir",
                pool_dir,
                "--idle-exit",
                str(idle_exit),
                "--log-level",
                log_level,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=daemon_environ(os.environ),
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(err)


def _tail(fd: int, name: str, lines: int = 3) -> str:
    try:
        with os.fdopen(pooldir.open_file(fd, name, os.O_RDONLY), errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def connect_or_spawn(
    pool_dir: str, idle_exit: float = 60.0, log_level: str = "info", spawn: bool = True
) -> socket.socket:
    """Return a socket connected to the pool daemon, starting one if none answers.

    The pool directory is opened once, checked (with every ancestor) by descriptor, and
    everything after is relative to that descriptor. Many forks may arrive at once: they
    serialise on a lock file, and only the first finds no daemon and starts one. A socket
    left by a killed daemon refuses connections and is replaced by the new daemon.
    """
    try:
        fd = pooldir.open_pool_dir(pool_dir, create=spawn)
    except FileNotFoundError:
        raise PoolUnavailable(f"no pool daemon is running for {pool_dir}") from None
    except pooldir.PoolDirError as e:
        raise PoolUnavailable(str(e)) from None
    try:
        return _connect_or_spawn(fd, pool_dir, idle_exit, log_level, spawn)
    except pooldir.PoolDirError as e:
        raise PoolUnavailable(str(e)) from None
    finally:
        os.close(fd)


def _connect_or_spawn(fd: int, pool_dir: str, idle_exit: float, log_level: str, spawn: bool) -> socket.socket:
    try:
        return _connect(fd, pool_dir)
    except (FileNotFoundError, ConnectionRefusedError):
        if not spawn:
            raise PoolUnavailable(f"no pool daemon is running for {pool_dir}") from None
    socket_path(pool_dir)  # the daemon binds by path: refuse one too long before starting it
    lock = pooldir.open_file(fd, pooldir.SPAWN_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _connect(fd, pool_dir)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        try:
            proc = spawn_daemon(pool_dir, idle_exit, log_level, dir_fd=fd)
        except OSError as e:
            raise PoolUnavailable(
                f"cannot start the pool daemon in {pool_dir} ({e.strerror or e}): is its file system full or read-only?"
            ) from None
        deadline = time.monotonic() + SPAWN_TIMEOUT
        delay = 0.005
        while True:
            try:
                return _connect(fd, pool_dir)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if proc.poll() is not None:
                # It lost a race to a daemon that is now answering, or it failed.
                try:
                    return _connect(fd, pool_dir)
                except (FileNotFoundError, ConnectionRefusedError):
                    detail = (
                        _tail(fd, pooldir.STDERR_FILE)
                        or _tail(fd, pooldir.LOG_FILE)
                        or f"it could write no log (is the file system of {pool_dir} full or read-only?)"
                    )
                    raise PoolUnavailable(
                        f"the pool daemon exited with status {proc.returncode} at start: "
                        f"{detail}; see {pool_dir}/{pooldir.LOG_FILE}"
                    ) from None
            if time.monotonic() > deadline:
                raise PoolUnavailable(
                    f"the pool daemon did not start within {SPAWN_TIMEOUT:g}s; see {pool_dir}/{pooldir.LOG_FILE}"
                )
            # The daemon binds by path: the path must still lead, safely, to the directory we hold.
            pooldir.still_there(fd, pool_dir)
            time.sleep(delay)
            # A failed connect costs microseconds; a late one costs every waiting task the gap.
            delay = min(delay * 2, SPAWN_POLL_MAX)
    finally:
        os.close(lock)


class EarlySocket(threading.Thread):
    """A worker's socket to the daemon, connected (the daemon started if none runs) ahead of its
    first request; a failure is met again, and reported, there."""

    def __init__(self, pool_dir: str, idle_exit: float) -> None:
        super().__init__(name="pooled_ssh-open", daemon=True)
        self.pool_dir, self.idle_exit = pool_dir, idle_exit
        self.sock: Optional[socket.socket] = None

    def run(self) -> None:
        try:
            self.sock = connect_or_spawn(self.pool_dir, self.idle_exit)
        except Exception:  # reported by the request that connects again
            self.sock = None


#: How long a worker that never connected waits for the daemon to take its warm request.
WARM_REPLY = 2.0


def warm(sock: socket.socket, conn: Dict[str, object], pool: Dict[str, object]) -> bool:
    """Ask the daemon to open ``conn``'s transport in the background (this worker's task needed
    none; the host's next one will): hello, bind and warm in one write, then their three replies,
    so that the daemon has the request before the socket closes. Whether it took it; never raises."""
    deadline = time.monotonic() + WARM_REPLY
    try:
        frames = [
            proto.encode({"op": "hello", "version": proto.PROTOCOL_VERSION, "pid": os.getpid()}),
            proto.encode({"op": "bind", "id": 1, "conn": conn, "pool": pool}),
            proto.encode({"op": "warm", "id": 2}),
        ]
        sock.settimeout(WARM_REPLY)
        sock.sendall(b"".join(frames))
        replies = [proto.recv_frame(sock, deadline=deadline)[0] for _frame in frames]
    except (OSError, ValueError, TypeError, proto.ProtocolError):  # TypeError: a value JSON cannot hold
        return False
    return [r.get("t") for r in replies] == ["hello", "bound", "ok"]
