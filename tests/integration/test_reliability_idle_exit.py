"""Workers that arrive while the pool daemon leaves on its idle timeout are served (cron runs meet this).

The daemon exits when it has held nothing for ``daemon_idle_timeout``. Each round below waits for
it to decide to go ("held nothing ...; exiting" in its log) and sends five workers at once, then
five more the moment its socket is gone or replaced: the first land in a listener about to
close, the others race the next daemon's start. Ten rounds, 100 connections, each the real
client (``PoolClient``: connect or start the daemon, hello, one request). None may fail.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import List, Optional

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._client import PoolClient
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.frames import socket_name
from harness.sshd import wait_until

ROUNDS = 10
PER_WAVE = 5
IDLE_EXIT = 0.3
EXITING = "; exiting"


def socket_inode(path: Path) -> Optional[int]:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def test_100_workers_around_idle_exits_all_served(pool_dir):
    log = Path(pool_dir) / "daemon.log"
    sock = Path(pool_dir) / socket_name()
    failures: List[str] = []
    answers: List[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = PoolClient(str(pool_dir), idle_exit=IDLE_EXIT)
        try:
            reply = client.call({"op": "ping"})
            with lock:
                answers.append(str(reply.get("t")))
        except Exception as exc:  # every failure is the finding
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    def wave() -> List[threading.Thread]:
        threads = [threading.Thread(target=worker, daemon=True) for _round in range(PER_WAVE)]
        for thread in threads:
            thread.start()
        return threads

    def exits() -> int:
        return log.read_text(errors="replace").count(EXITING) if log.exists() else 0

    worker()  # the first daemon
    launched: List[threading.Thread] = []
    for _round in range(ROUNDS):
        seen = exits()
        inode = socket_inode(sock)
        wait_until(lambda seen=seen: exits() > seen, 30, interval=0.002, what="the daemon to decide to exit")
        launched += wave()
        wait_until(lambda inode=inode: socket_inode(sock) != inode, 30, interval=0.001, what="the socket to go")
        launched += wave()
        for thread in launched:
            thread.join(60)
        assert not any(t.is_alive() for t in launched), "a worker hung"
    assert len(launched) == ROUNDS * PER_WAVE * 2
    assert failures == [], f"{len(failures)} of {len(launched)} failed: {failures[:5]}"
    assert answers.count("pong") == len(launched) + 1
