# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Worker side of the pool: find the daemon (starting it if needed) and talk to it.

Used by the connection plugin, the CLI and the ``pool``/``pool_info`` modules. Does not import
Ansible, so that the command line works without it. The worker trusts its daemon only after
checking it: the pool directory is opened by descriptor with every ancestor checked
(:mod:`pooldir`), and the listener's uid is read with ``SO_PEERCRED`` before a byte is sent
(both in :mod:`._client_connect`, which also starts the daemon; its functions that other code
uses are importable from here). This module holds the conversation: hello, bind, requests and
their replies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Dict, Iterator, Optional, Tuple

from ._client_connect import check_pool_dir, connect_or_spawn, pool_dir_path, spawn_daemon
from ._client_io import DAEMON_MARGIN, PROMPT_REPLY, InputWriter, send_input, start_budget
from .errors import ErrorKind, PoolFailure, PoolUnavailable
from .wire import frames as proto
from .wire import messages as msgs
from .wire import parts
from .wire.fields import Malformed

#: Longest wait for whatever listens on the pool socket to answer our hello.
HELLO_TIMEOUT = 10.0


#: Importable from here: the client, its errors, and the pool functions that other code uses.
__all__ = [
    "PoolClient",
    "PoolFailure",
    "PoolUnavailable",
    "check_pool_dir",
    "connect_or_spawn",
    "current_umask",
    "pool_dir_path",
    "spawn_daemon",
]


def current_umask() -> int:
    """This process's umask, sent with a fetch so the file gets the mode ``ssh`` would give it.

    Read from /proc (``os.umask`` can only be read by setting it, which races other threads).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _DaemonGone(Exception):
    """The daemon closed the connection (or said "shutdown") before its hello: it is leaving."""


#: Connections tried when the daemon keeps leaving before the hello (each may start a new one).
GONE_ATTEMPTS = 3


class PoolClient:
    """One worker's conversation with the daemon, over one socket reused for every request.

    The connection spec and pool settings are sent once per socket (``bind``), before the first
    request that needs them; every request gets an operation id, and replies that answer another
    (an abandoned) operation are dropped.
    """

    def __init__(self, pool_dir: str, idle_exit: float = 60.0, log_level: str = "info", spawn: bool = True) -> None:
        self.pool_dir = pool_dir
        self.idle_exit = idle_exit
        self.log_level = log_level
        self.spawn = spawn
        self._sock: Optional[socket.socket] = None
        self._pid = 0
        self._next_id = 0
        self._op: Optional[int] = None
        self._bind: Optional[Dict[str, Any]] = None
        self._bound: Optional[socket.socket] = None
        self.daemon_pid: Optional[int] = None
        #: When (monotonic) the daemon must have answered by, for the reply being awaited (None: no limit).
        self._deadline: Optional[float] = None
        #: Sends a command's input while the caller reads its output (see :meth:`_write_input`).
        self._writer: Optional[InputWriter] = None
        #: Seconds to wait for the daemon's next reply (None: no limit). The plugin sets it while awaiting a
        #: become prompt; when it expires the request is abandoned (kind "recv_timeout").
        self.recv_timeout: Optional[float] = None

    def _hello(self, sock: socket.socket) -> None:
        """Say hello; :class:`_DaemonGone` when the daemon is leaving (the caller connects again)."""
        path = os.path.join(self.pool_dir, proto.socket_name())
        try:
            # Whatever listens on the socket must say hello in time: a process of another
            # version (or a wedged one) is refused, never waited on forever.
            sock.settimeout(HELLO_TIMEOUT)
            proto.send_frame(sock, {"op": msgs.Op.HELLO.value, "version": proto.PROTOCOL_VERSION, "pid": os.getpid()})
            reply, _payload = proto.recv_frame(sock)
            sock.settimeout(None)
        except (proto.PeerClosed, ConnectionResetError, BrokenPipeError):
            # Closed before any reply: a daemon leaving on its idle timeout drops its backlog.
            sock.close()
            raise _DaemonGone() from None
        except (OSError, proto.ProtocolError) as e:
            sock.close()
            detail = f"no answer within {HELLO_TIMEOUT:g}s" if isinstance(e, socket.timeout) else str(e)
            raise PoolUnavailable(
                f"the process listening on {path} is not a pool daemon of protocol "
                f"{proto.PROTOCOL_VERSION} ({detail}): stop that process, or set pool_dir "
                "to another directory"
            ) from None
        if reply.get("t") == msgs.Reply.ERROR.value and reply.get("kind") == ErrorKind.SHUTDOWN.value:
            sock.close()
            raise _DaemonGone()
        if reply.get("t") == msgs.Reply.ERROR.value and reply.get("kind") == ErrorKind.BUSY.value:
            sock.close()
            raise PoolUnavailable(str(reply.get("msg")))
        if reply.get("t") != msgs.Reply.HELLO.value or reply.get("version") != proto.PROTOCOL_VERSION:
            sock.close()
            got = reply.get("msg") if reply.get("t") == "error" else f"protocol {str(reply.get('version'))[:20]}"
            raise PoolUnavailable(
                f"the pool daemon on {path} refused us or speaks another protocol ({got}; "
                f"we speak {proto.PROTOCOL_VERSION}): stop that process, or set pool_dir "
                "to another directory"
            )
        self.daemon_pid = reply.get("pid")

    def _socket(self) -> socket.socket:
        # The daemon drops workers idle between requests: find that out before sending one.
        if self._sock is not None and self._pid == os.getpid() and self._op is None and proto.peer_closed(self._sock):
            self.close()
        # A socket inherited across fork() is shared with the parent: open our own.
        if self._sock is None or self._pid != os.getpid():
            for attempt in range(GONE_ATTEMPTS):
                sock = connect_or_spawn(self.pool_dir, self.idle_exit, self.log_level, self.spawn)
                try:
                    self._hello(sock)
                    break
                except _DaemonGone:
                    if attempt == GONE_ATTEMPTS - 1:
                        raise PoolUnavailable(
                            f"the pool daemon in {self.pool_dir} kept closing our connection "
                            f"before saying hello ({GONE_ATTEMPTS} tries); see "
                            f"{self.pool_dir}/daemon.log"
                        ) from None
            self._sock, self._pid, self._bound = sock, os.getpid(), None
        return self._sock

    def open(self) -> None:
        """Connect now, starting the daemon if none answers (the first request would do it anyway)."""
        self._socket()

    def adopt(self, sock: socket.socket) -> None:
        """Take a socket that :func:`connect_or_spawn` connected ahead (on another thread), saying hello
        on it. When that fails, the socket is dropped and the next request connects, and reports, as usual."""
        if self._sock is not None and self._pid == os.getpid():
            sock.close()
            return
        try:
            self._hello(sock)
        except (_DaemonGone, PoolUnavailable):
            return  # _hello closed it
        self._sock, self._pid, self._bound = sock, os.getpid(), None

    def close(self) -> None:
        self._writer = None  # its sends fail once the socket is closed; it is never waited for
        if self._sock is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._bound = None
        self._op = None

    def bind(self, spec: Dict[str, Any], settings: Dict[str, Any]) -> None:
        """Set the connection spec and pool settings of later requests (checked here first)."""
        message = {"conn": spec, "pool": settings}
        try:
            msgs.Bind.from_wire(message)
        except Malformed as e:
            raise PoolFailure(ErrorKind.PROTOCOL, f"malformed bind request: {e}") from None
        if message != self._bind:
            self._bind, self._bound = message, None

    def _where(self) -> str:
        """``addr:port: `` of the bound connection, for messages that start here (empty when none)."""
        conn = (self._bind or {}).get("conn")
        if not isinstance(conn, dict):
            return ""
        return f"{conn.get('addr') or conn.get('host')}:{conn.get('port')}: "

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _ensure_bound(self, sock: socket.socket) -> None:
        if self._bound is sock:
            return
        if self._bind is None:
            raise PoolFailure(ErrorKind.PROTOCOL, "no connection spec bound before this request")
        op_id = self._new_id()
        proto.send_frame(sock, dict(self._bind, op=msgs.Op.BIND.value, id=op_id))
        self._deadline = time.monotonic() + PROMPT_REPLY
        try:
            self._reply_to(sock, op_id)
        finally:
            self._deadline = None
        self._bound = sock

    def call(self, message: Dict[str, Any], payload: bytes = b"") -> Dict[str, Any]:
        """Send one request and return its single reply (raising on an error reply)."""
        sock, op_id = self._send(message, payload)
        op, _op_id = msgs.envelope(message)
        # A transfer's reply comes when the file is there, however long that takes; the rest at once.
        self._deadline = None if op in msgs.BOUND_OPS else time.monotonic() + PROMPT_REPLY
        try:
            return self._reply_to(sock, op_id)
        finally:
            self._deadline = None

    def _reply_to(self, sock: socket.socket, op_id: int) -> Dict[str, Any]:
        """The reply to ``op_id``, without its envelope's id (callers see ``t`` and the body); a reply
        sent in parts (one that grows with the pool) is put back together first."""
        whole, _payload = self._recv(sock, op_id)
        reply = whole
        while True:
            if reply.get("t") == msgs.Reply.ERROR.value:
                raise PoolFailure(str(reply.get("kind")), str(reply.get("msg")))
            if reply is not whole:
                try:
                    parts.merge(whole, reply)
                except ValueError as e:
                    self.close()
                    raise PoolFailure(ErrorKind.PROTOCOL, f"the pool daemon's reply could not be read: {e}") from None
            if not parts.more(whole):
                break
            reply, _payload = self._recv(sock, op_id)
        whole.pop("re", None)
        return whole

    def _send(self, message: Dict[str, Any], payload: bytes = b"") -> Tuple[socket.socket, int]:
        """Send a request; a daemon that died since our last request is restarted once."""
        op, _op_id = msgs.envelope(message)
        self._wait_writer()  # a new request's frames never go between an earlier one's input frames
        for attempt in (1, 2):
            sock = self._socket()
            try:
                if op in msgs.BOUND_OPS:
                    self._ensure_bound(sock)
                op_id = self._new_id()
                proto.send_frame(sock, dict(message, id=op_id), payload)
                return sock, op_id
            except proto.MessageTooLarge as e:
                # Nothing was sent: the conversation is intact, and the request can never fit.
                raise PoolFailure(
                    ErrorKind.TOO_LARGE,
                    f"{self._where()}the {message.get('op')} request is too large "
                    f"for the pool daemon ({e}): shorten the command or the lists in the connection's "
                    "options (known_hosts files, identity files, jump hosts)",
                ) from None
            except OSError:
                self.close()
                if attempt == 2:
                    raise PoolUnavailable(f"lost the pool daemon in {self.pool_dir}") from None
        raise AssertionError("unreachable")

    def _recv(self, sock: socket.socket, op_id: int) -> Tuple[Dict[str, Any], bytes]:
        """The next reply to ``op_id``; replies to other (abandoned) operations are dropped."""
        while True:
            reply, data = self._recv_any(sock)
            if reply.get("re") == op_id or (reply.get("re") is None and reply.get("t") == msgs.Reply.ERROR.value):
                return reply, data

    def _recv_any(self, sock: socket.socket) -> Tuple[Dict[str, Any], bytes]:
        timeout = self.recv_timeout
        wedged = timeout is None and self._deadline is not None
        if wedged and self._deadline is not None:
            timeout = max(0.001, self._deadline - time.monotonic())
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            return proto.recv_frame(sock)
        except TimeoutError:
            # A frame may be half read: the conversation cannot go on; the daemon closes the channel.
            self.close()
            if wedged:
                pid = self.daemon_pid
                raise PoolFailure(
                    ErrorKind.DAEMON_LOST,
                    f"the pool daemon (pid {pid}) did not answer in time: it is "
                    "stopped or wedged, and the operation's outcome is unknown; see "
                    f"{self.pool_dir}/daemon.log, and stop it (kill {pid}) so that the next task "
                    "starts another",
                ) from None
            within = f"{timeout:g}s" if timeout is not None else "the socket's timeout"
            raise PoolFailure(ErrorKind.RECV_TIMEOUT, f"no reply from the pool daemon within {within}") from None
        except (OSError, proto.ProtocolError) as e:
            self.close()
            raise PoolFailure(
                ErrorKind.DAEMON_LOST,
                f"the pool daemon went away mid-request ({e}); the operation's outcome is unknown",
            ) from None
        finally:
            if timeout is not None and self._sock is sock:
                # Sends (module data after the escalation) must not inherit the deadline.
                sock.settimeout(None)

    def exec_stream(self, message: Dict[str, Any], stdin: bytes = b"", eof: bool = True) -> Iterator[Tuple[str, Any]]:
        """Run a command; yield ("started", info), ("out"|"err", bytes), then ("exit", rc).

        The caller may send more input with :meth:`send_stdin` while iterating (become
        prompts). Raises :class:`PoolFailure` for an error reply.
        """
        first = stdin[: proto.CHUNK]
        rest = stdin[proto.CHUNK :]
        sock, op_id = self._send(dict(message, op=msgs.Op.EXEC.value, eof=eof and not rest), first)
        self._op = op_id
        try:
            yield from self._exec_replies(sock, op_id, rest, eof, message.get("command_timeout"))
        finally:
            self._op, self._deadline = None, None

    def xrun_stream(self, message: Dict[str, Any], payload: bytes) -> Iterator[Tuple[str, Any]]:
        """A pipelined module run through the remote executor: like :meth:`exec_stream`, or one
        ("fallback", reason) when nothing ran and the caller should run the command the plain way."""
        sock, op_id = self._send(dict(message, op=msgs.Op.XRUN.value), payload)
        self._op = op_id
        try:
            yield from self._exec_replies(sock, op_id, b"", True, message.get("command_timeout"))
        finally:
            self._op, self._deadline = None, None

    def _exec_replies(
        self, sock: socket.socket, op_id: int, rest: bytes, eof: bool, command_timeout: Any = None
    ) -> Iterator[Tuple[str, Any]]:
        # Until "started", the daemon connects; then a command with a command_timeout must end (the daemon
        # says so at that limit) within it. Without one, a silent command may run as long as it likes.
        self._deadline = time.monotonic() + start_budget(self._bind or {})
        while True:
            reply, data = self._recv(sock, op_id)
            kind = reply.get("t")
            if kind == msgs.Reply.STARTED.value:
                limit = command_timeout if isinstance(command_timeout, (int, float)) and command_timeout > 0 else None
                self._deadline = None if limit is None else time.monotonic() + limit + DAEMON_MARGIN
                if rest:
                    self._write_input(rest, eof)
                    rest = b""
                yield "started", reply
            elif kind in (msgs.Reply.OUT.value, msgs.Reply.ERR.value):
                yield kind, data
            elif kind == msgs.Reply.EXIT.value:
                yield "exit", int(reply["rc"])
                return
            elif kind == msgs.Reply.FALLBACK.value:
                yield "fallback", str(reply.get("reason", ""))
                return
            elif kind == msgs.Reply.ERROR.value:
                raise PoolFailure(str(reply.get("kind")), str(reply.get("msg")))
            else:
                self.close()
                raise PoolFailure(ErrorKind.PROTOCOL, f"unexpected reply {kind!r} from the pool daemon")

    def _write_input(self, data: bytes, eof: bool) -> None:
        """Send the rest of a command's input while the caller goes on reading its output (:mod:`._client_io`)."""
        if self._sock is None or self._op is None:
            raise PoolFailure(ErrorKind.PROTOCOL, "no command is running to take this input")
        self._writer = InputWriter(self._sock, self._op, data, eof)

    def _wait_writer(self) -> None:
        """Let the input being written finish first; a daemon that takes none of it for a while
        (wedged) costs this connection, not the next request."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.wait() and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # the writer's send fails and it ends
            self.close()

    def send_stdin(self, data: bytes, eof: bool = False) -> None:
        """More input for the running command (named by its operation id), after what is still
        being written of its first input."""
        self._wait_writer()
        if self._sock is None or self._op is None:
            raise PoolFailure(ErrorKind.PROTOCOL, "no command is running to take this input")
        send_input(self._sock, self._op, data, eof)
