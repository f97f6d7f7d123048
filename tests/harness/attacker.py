"""Another local user attacking the pool directory: a throwaway account, a writable ancestor, a fake daemon.

Root only. :class:`HostileUser` creates an account for the test and removes it afterwards.
:class:`PoolDirSwapper` runs, as that user, a program that watches a pool directory whose parent
the user owns; the moment a worker starts using it (its modification time changes: the spawn lock
or ``daemon.stderr`` is created) it renames the directory away, puts a directory of its own in
its place and listens there on the pool socket's name. It answers ``hello`` as a daemon of the
right protocol would, records every byte it receives, and answers every later request with an
error so the worker never waits on it. Everything it does goes to a log the test reads.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import List, Optional

from .sshd import HarnessError, needs_root, target_python, wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Runs as the hostile user with the system interpreter (the controller's may be unreachable to it).
# Standard library only: it must not need the collection to speak the wire format.
_SWAPPER = r"""
import json, os, socket, struct, sys, threading, time

pool, sock_name, version, record, log_path, ready = sys.argv[1:7]
version = int(version)
magic = b"HPS" + bytes([version])
header = struct.Struct("!4sII")
lock = threading.Lock()


def log(text):
    with lock, open(log_path, "a") as f:
        f.write(f"{time.monotonic():.6f} {text}\n")


def keep(data):
    with lock, open(record, "ab") as f:
        f.write(data)


def frame(message):
    body = json.dumps(message).encode()
    return header.pack(magic, len(body), 0) + body


def serve(conn):
    buf = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            keep(data)
            buf += data
            while len(buf) >= header.size:
                _, jlen, plen = header.unpack(buf[:header.size])
                if len(buf) < header.size + jlen + plen:
                    break
                body = json.loads(buf[header.size:header.size + jlen])
                buf = buf[header.size + jlen + plen:]
                log(f"frame op={body.get('op')}")
                if body.get("op") == "hello":
                    conn.sendall(frame({"t": "hello", "version": version, "pid": os.getpid()}))
                else:
                    conn.sendall(frame({"t": "error", "kind": "connect", "msg": "fake daemon"}))
    except OSError as e:
        log(f"connection error {e!r}")
    finally:
        conn.close()


start = os.stat(pool).st_mtime_ns
open(ready, "w").close()
log("watching")
while os.stat(pool).st_mtime_ns == start:
    pass
os.rename(pool, pool + ".real")
os.mkdir(pool, 0o755)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(os.path.join(pool, sock_name))
listener.listen(64)
log("swapped")
while True:
    conn, _ = listener.accept()
    log("accepted a connection")
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class HostileUser:
    """A throwaway local account (no home, no shell), deleted with its files in :meth:`remove`."""

    def __init__(self) -> None:
        needs_root("creating a throwaway user needs useradd")
        self.name = f"hx{uuid.uuid4().hex[:10]}"
        proc = subprocess.run(
            ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", self.name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(f"useradd {self.name} failed: {proc.stderr.strip()}")
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def remove(self) -> None:
        proc = subprocess.run(["userdel", self.name], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode not in (0, 6):  # 6: no such user (already gone)
            raise HarnessError(f"userdel {self.name} failed: {proc.stderr.strip()}")


class PoolDirSwapper:
    """The attack on ``<base>/shared/pool``: ``shared`` belongs to ``user``, ``pool`` to us (0700)."""

    def __init__(self, base: Path, user: HostileUser) -> None:
        self.user = user
        self.shared = base / "shared"
        self.pool_dir = self.shared / "pool"
        self.own = base / "attacker"  # the attacker's private files
        self.record = self.own / "received.bin"
        self.log = self.own / "swapper.log"
        self._ready = self.own / "ready"
        for path, owner, mode in ((self.shared, user, 0o755), (self.own, user, 0o700)):
            path.mkdir()
            os.chown(path, owner.uid, owner.gid)
            path.chmod(mode)
        self.pool_dir.mkdir(mode=0o700)
        self.pool_dir.chmod(0o700)
        self._proc: Optional[subprocess.Popen] = None

    def start(self, socket_name: str, protocol_version: int) -> None:
        script = self.own / "swapper.py"
        script.write_text(_SWAPPER, encoding="utf-8")
        os.chown(script, self.user.uid, self.user.gid)
        with open(self.own / "swapper.stderr", "wb") as err:
            self._proc = subprocess.Popen(
                [
                    target_python(),
                    "-I",
                    str(script),
                    str(self.pool_dir),
                    socket_name,
                    str(protocol_version),
                    str(self.record),
                    str(self.log),
                    str(self._ready),
                ],
                user=self.user.uid,
                group=self.user.gid,
                extra_groups=[],
                cwd=str(self.own),
                env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        proc = self._proc
        wait_until(
            lambda: self._ready.exists() or proc.poll() is not None,
            START_TIMEOUT,
            what="the swapper to watch the pool directory",
        )
        if proc.poll() is not None:
            raise HarnessError(f"the swapper exited: {self.stderr()}")

    def received(self) -> bytes:
        return self.record.read_bytes() if self.record.exists() else b""

    def events(self) -> List[str]:
        return [ln.split(" ", 1)[1] for ln in self.log.read_text().splitlines()] if self.log.exists() else []

    def stderr(self) -> str:
        path = self.own / "swapper.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def pool_dirs(self) -> List[Path]:
        """Every pool directory a daemon may have used: ours (wherever it was moved) and the fake."""
        return [p for p in (self.pool_dir, Path(str(self.pool_dir) + ".real")) if p.exists()]

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
