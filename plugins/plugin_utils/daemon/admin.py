# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operations that look at or steer the pool: evict, stats, status, stop, ping."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional

from ..pool.settings import PoolKey
from ..ssh.paramiko_guard import paramiko
from ..wire import frames
from ..wire import messages as msgs
from . import xrun

if TYPE_CHECKING:
    from .session import Session


def evict(session: Session, op_id: int, req: msgs.Evict) -> None:
    def match(key: PoolKey) -> bool:
        return (
            (req.host is None or key.host == req.host)
            and (req.port is None or key.port == req.port)
            and (req.user is None or key.user == req.user)
        )

    daemon = session.daemon
    closed = daemon.pool.evict(match)
    daemon.connector.forget_auth_failures(match)
    session.send(msgs.reply(msgs.Reply.OK, op_id, msgs.Closed(closed)))


def stats(session: Session, op_id: int, req: msgs.Empty) -> None:
    s = session.daemon.pool.stats()
    session.send(msgs.reply(msgs.Reply.STATS, op_id, msgs.StatsReply(s["total"], s["hosts"])))


def _dumpable() -> Optional[bool]:
    """What the kernel says (PR_GET_DUMPABLE): the worker that started us turned it off."""
    try:
        import ctypes

        return bool(ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def status(session: Session, op_id: int, req: msgs.Empty) -> None:
    daemon = session.daemon
    info = {
        "pid": os.getpid(),
        "protocol": frames.PROTOCOL_VERSION,
        "socket": daemon.socket_path,
        "started": daemon.started,
        "uptime": round(time.time() - daemon.started, 3),
        "clients": daemon.client_count(),
        "requests": daemon.requests,
        "paramiko": paramiko.__version__,
        "threads": threading.active_count(),
        "dumpable": _dumpable(),
        "executor": xrun.counters(),
        "warm": asdict(daemon.warmer.counters),
    }
    session.send(
        msgs.reply(msgs.Reply.STATUS, op_id, msgs.StatusReply(info, daemon.pool.stats(), daemon.pool.snapshot()))
    )


def stop(session: Session, op_id: int, req: msgs.Empty) -> None:
    session.send(msgs.reply(msgs.Reply.OK, op_id))
    session.daemon.stopping.set()


def ping(session: Session, op_id: int, req: msgs.Empty) -> None:
    session.send(msgs.reply(msgs.Reply.PONG, op_id))
