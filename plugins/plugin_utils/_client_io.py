# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""For :class:`._client.PoolClient`: a command's input, written while the worker reads the
command's output, and how long the daemon may take to answer before the worker calls it wedged.

A command that writes before it reads (``cat`` behind a full pipe) waits for its output to be
read before it takes more input; the daemon buffers only so much input. A worker that sent all
its input before reading anything would wait for the command while the command waits for it.
Does not import Ansible.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Dict

from .wire import frames
from .wire import messages as msgs

#: Longest wait for the input of an earlier command to be taken before a new request is sent.
WRITER_WAIT = 30.0
#: How long the daemon may take to answer a request it answers at once (bind, ping, stats...).
PROMPT_REPLY = 60.0
#: Added to a command's own limits (connect ``timeout``, ``pool_wait_timeout``, ``command_timeout``)
#: for the daemon's answers: past that, the daemon is stopped or wedged, and the worker says so.
#: Generous: a daemon slowed by a loaded machine must never be taken for a wedged one.
DAEMON_MARGIN = 300.0
#: How long the daemon may queue a request for a handshake slot (``ssh.connect.QUEUE_ALLOWANCE``).
HANDSHAKE_QUEUE = 60.0


def start_budget(bind: Dict[str, Any]) -> float:
    """Seconds the daemon may take to start a command: connect and wait for the pool as the bound
    settings allow (a handshake queued behind others, a few retries), and a margin."""
    conn, pool = bind.get("conn") or {}, bind.get("pool") or {}
    timeout, wait = conn.get("timeout"), pool.get("wait_timeout")
    budget = HANDSHAKE_QUEUE + DAEMON_MARGIN
    if isinstance(timeout, (int, float)) and timeout > 0:
        budget += 3 * float(timeout)  # the handshake and its retries
    if isinstance(wait, (int, float)) and wait > 0:
        budget += float(wait)  # the wait for a free transport
    return budget


def send_input(sock: socket.socket, op_id: int, data: bytes, eof: bool) -> None:
    """``data`` as ``stdin`` frames of operation ``op_id``, then its end when ``eof``."""
    for start in range(0, len(data), frames.CHUNK):
        frames.send_frame(sock, {"op": msgs.Op.STDIN.value, "id": op_id}, data[start : start + frames.CHUNK])
    if eof:
        frames.send_frame(sock, {"op": msgs.Op.EOF.value, "id": op_id})


class InputWriter:
    """Writes one command's input on a thread of its own (a daemon that went away ends it)."""

    def __init__(self, sock: socket.socket, op_id: int, data: bytes, eof: bool) -> None:
        self._thread = threading.Thread(
            target=self._write, args=(sock, op_id, data, eof), name="pooled_ssh-stdin", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _write(sock: socket.socket, op_id: int, data: bytes, eof: bool) -> None:
        with contextlib.suppress(OSError):  # the daemon went away: the reader says so
            send_input(sock, op_id, data, eof)

    def wait(self) -> bool:
        """Whether all of it was written (or given up) within WRITER_WAIT; False: the daemon takes none."""
        if self._thread is threading.current_thread():
            return True
        self._thread.join(WRITER_WAIT)
        return not self._thread.is_alive()
