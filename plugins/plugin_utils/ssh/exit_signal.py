# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's Paramiko transport: the signal that ended a remote command, which Paramiko does not
read, and a reader thread that sleeps longer between looks when nothing arrives.

A command killed by a signal ends with an ``exit-signal`` channel request (RFC 4254, 6.10)
instead of an ``exit-status``. Paramiko answers that request as unknown and keeps nothing of
it, so the command would look like a session lost midway. The transport class built here
reads the signal's name before Paramiko's own handler runs and keeps it, by channel, until
the relay asks: the command is then reported as a shell reports it, exit status 128 + n.
Daemon only (imports Paramiko).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import threading
from typing import Any, Dict, Optional

from .paramiko_guard import paramiko

#: Signal numbers by the names RFC 4254 uses (without "SIG").
SIGNALS: Dict[str, int] = {
    s.name[3:]: int(s) for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")
}


#: How often each transport's reader thread wakes when nothing arrives (Paramiko: 0.1 s). It wakes
#: only to notice that the transport was closed (which never waits for it) and to start a rekey
#: that is due while idle; at 0.1 s a thousand idle pooled transports woke ten thousand times a
#: second, and that, not the commands, was most of the daemon's CPU at scale.
IDLE_WAKEUP = 1.0


class ExitSignals:
    """Signal names by local channel id, as the server sent them (read once, then forgotten)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: Dict[int, str] = {}

    def record(self, chanid: int, name: str) -> None:
        with self._lock:
            self._names[chanid] = name

    def take(self, chanid: int) -> Optional[str]:
        with self._lock:
            return self._names.pop(chanid, None)


def status_of(name: str) -> int:
    """The exit status a shell gives a command killed by signal ``name``: 128 + its number."""
    return 128 + SIGNALS.get(name.upper().removeprefix("SIG"), 0)


def exit_signal(chan: paramiko.Channel) -> Optional[str]:
    """The name of the signal that ended the command on ``chan`` (None: it was not killed, or
    its transport is not one of ours)."""
    signals = getattr(chan.get_transport(), "exit_signals", None)
    return signals.take(chan.get_id()) if isinstance(signals, ExitSignals) else None


@functools.cache
def transport_class(base: Any) -> Any:
    """``base`` (Paramiko's Transport) with the exit signal read; ``base`` itself when it has no
    channel handler table to extend (another Paramiko, a test's stand-in)."""
    table = getattr(base, "_channel_handler_table", None)
    request = paramiko.common.MSG_CHANNEL_REQUEST
    if not isinstance(table, dict) or request not in table:
        return base
    paramiko_handler = table[request]

    def handle_request(chan: paramiko.Channel, m: paramiko.Message) -> None:
        try:
            if m.get_text() == "exit-signal":
                m.get_boolean()  # want reply (always false)
                signals = getattr(chan.get_transport(), "exit_signals", None)
                if isinstance(signals, ExitSignals):
                    signals.record(chan.get_id(), m.get_text())
        except Exception:  # a request we cannot read: Paramiko's handler decides, as before
            pass
        m.rewind()
        m.get_int()  # the channel id, which the transport read before calling us
        paramiko_handler(chan, m)

    def close(self: Any) -> None:
        # The reader thread sits in recv() for up to IDLE_WAKEUP; a descriptor closed under it sends
        # nothing until that returns, so the server would see the connection end a second late.
        if self.active:
            with contextlib.suppress(Exception):
                self.sock.shutdown(socket.SHUT_RDWR)
        base.close(self)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self.exit_signals = ExitSignals()

    return type(
        "PooledParamikoTransport",
        (base,),
        {
            "__init__": __init__,
            "close": close,
            "_channel_handler_table": {**table, request: handle_request},
            "_active_check_timeout": IDLE_WAKEUP,
        },
    )
