"""A fake of the SSH wire for the daemon's unit tests: Paramiko's Channel, Transport and SFTPClient.

Only what the daemon calls is faked, and it behaves as Paramiko does over a real server: an exec
request is answered (accepted or refused) before any output, output is buffered until read, a
channel's ``fileno()`` is a pipe that is readable while data or EOF is pending (as Paramiko's), a
dead transport closes its channels with no exit status. A :class:`FakeServer` scripts the server:
which commands run and what they print, MaxSessions, refusals, cuts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import paramiko

#: A command's behaviour: (command, its whole input) -> (stdout, stderr, rc), or None: it never ends.
Handler = Callable[[str, bytes], Optional[Tuple[bytes, bytes, int]]]


def echo_handler(cmd: str, stdin: bytes) -> Tuple[bytes, bytes, int]:
    """``echo X`` prints X; ``cat`` prints its input; ``exit N`` exits N; anything else prints its name."""
    if cmd.startswith("echo "):
        return cmd[5:].encode() + b"\n", b"", 0
    if cmd == "cat":
        return stdin, b"", 0
    if cmd.startswith("exit "):
        return b"", b"bye\n", int(cmd[5:])
    return cmd.encode(), b"", 0


@dataclass
class FakeServer:
    handler: Handler = echo_handler
    max_sessions: int = 10
    #: Refuse every exec request (CHANNEL_FAILURE).
    refuse_exec: bool = False
    #: The connection is cut once an exec request arrived, before its answer went out (it ran).
    die_after_exec: bool = False
    #: Refuse direct-tcpip (AllowTcpForwarding no).
    refuse_forwarding: bool = False
    #: Every command the server started, with its input.
    ran: List[Tuple[str, bytes]] = field(default_factory=list)
    transports: List[FakeTransport] = field(default_factory=list)
    #: Remote files for SFTP, under this directory (None: no SFTP subsystem).
    sftp_root: Optional[Path] = None
    #: An SFTP transfer breaks the transport after this many bytes.
    cut_after: Optional[int] = None
    #: How many SFTP transfers ``cut_after`` cuts before they go through whole (None: every one).
    cuts: Optional[int] = None
    forwarded: List[Tuple[str, int]] = field(default_factory=list)
    #: Commands that start without waiting for the end of their input (``cat FILE``).
    immediate: Callable[[str], bool] = lambda cmd: False
    #: Give channels' pipes descriptor numbers from this one up (select.select fails from 1024).
    high_fds: Optional[int] = None
    #: A closed channel keeps its session slot for this many later channel opens (sshd frees an SFTP
    #: session's slot only once its sftp-server exited).
    slot_held_opens: int = 0
    #: A refused channel open raises only Paramiko's text, as when another thread's open took the
    #: transport's one saved ChannelException.
    refusal_as_text: bool = False

    def transport(self) -> FakeTransport:
        t = FakeTransport(self)
        self.transports.append(t)
        return t


class FakeChannel:
    """The subset of ``paramiko.Channel`` the daemon uses."""

    def __init__(self, transport: FakeTransport, chanid: int) -> None:
        self.transport = transport
        self.remote_chanid = chanid
        self.event = threading.Event()
        self.event_ready = False
        self.closed = False
        self.active = True
        self.eof_received = False
        self.exit_status = -1
        self.pty: Optional[Tuple[str, int, int]] = None
        self.command: Optional[str] = None
        self.stdin = b""
        self.stdin_closed = False
        #: Input the fake command still takes (None: any amount); 0 models one that stopped reading.
        self.window: Optional[int] = None
        #: The server closes this channel when an exec arrives (a spare it timed out).
        self.stale = False
        self._out = b""
        self._err = b""
        self._lock = threading.Lock()
        self._r, self._w = os.pipe()
        if transport.server.high_fds is not None:
            high = fcntl.fcntl(self._r, fcntl.F_DUPFD, transport.server.high_fds)
            os.close(self._r)
            self._r = high
        self._signalled = False
        self.timeout: Optional[float] = None

    # -- the pipe Paramiko sets while the channel has something to read ------------------------

    def _update(self) -> None:
        with self._lock:
            want = bool(self._out or self._err or self.eof_received or self.closed)
            if want and not self._signalled:
                os.write(self._w, b"*")
                self._signalled = True
            elif not want and self._signalled:
                os.read(self._r, 1)
                self._signalled = False

    def fileno(self) -> int:
        return self._r

    # -- what the daemon calls ------------------------------------------------------------------

    def get_transport(self) -> FakeTransport:
        return self.transport

    def get_id(self) -> int:
        return self.remote_chanid

    def settimeout(self, timeout: Optional[float]) -> None:
        self.timeout = timeout

    def invoke_subsystem(self, name: str) -> None:
        if name != "sftp" or self.transport.server.sftp_root is None:
            raise paramiko.SSHException("subsystem request failed")  # no SFTP subsystem: the channel lives on

    def get_pty(self, term: str = "vt100", width: int = 80, height: int = 24) -> None:
        self.pty = (term, width, height)

    def _event_pending(self) -> None:
        self.event.clear()
        self.event_ready = False

    def _exec(self, cmd: str) -> None:
        """The server's answer to an exec request (sent by the daemon as a raw message)."""
        server = self.transport.server
        if self.stale or not self.transport.active:
            self._remote_close()
        elif server.refuse_exec:
            self.event_ready = False
        elif server.die_after_exec:
            server.ran.append((cmd, self.stdin))
            self.transport.die()
            return
        else:
            self.command = cmd
            self.event_ready = True
        self.event.set()
        if self.event_ready and server.immediate(cmd):
            self._run()

    def exec_command(self, cmd: str) -> None:
        self._event_pending()
        self._exec(cmd)
        if not self.event_ready:
            raise paramiko.SSHException("Channel closed.")

    def sendall(self, data: bytes) -> None:
        if self.closed:
            raise OSError("Socket is closed")
        self.stdin += data

    def send_ready(self) -> bool:
        return not self.closed and (self.window is None or self.window > 0)

    def send(self, data: bytes) -> int:
        """Like Paramiko's: at most what the window allows (``window``: None for no limit)."""
        if self.closed:
            raise OSError("Socket is closed")
        taken = len(data) if self.window is None else min(len(data), self.window)
        if self.window is not None:
            self.window -= taken
        self.stdin += data[:taken]
        return taken

    def shutdown_write(self) -> None:
        self.stdin_closed = True
        if self.command is not None:
            self._run()

    def _run(self) -> None:
        server = self.transport.server
        server.ran.append((self.command or "", self.stdin))
        result = server.handler(self.command or "", self.stdin)
        if result is None:
            return  # runs for ever
        out, err, rc = result
        self.feed(out, err)
        self.finish(rc)

    def feed(self, out: bytes = b"", err: bytes = b"") -> None:
        self._out += out
        self._err += err
        self._update()

    def finish(self, rc: int) -> None:
        self.exit_status = rc
        self._remote_close()

    def _remote_close(self) -> None:
        self.eof_received = True
        self.closed = True
        self.active = False
        self.event.set()
        self._update()

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv(self, n: int) -> bytes:
        """As Paramiko's: waits for data or the end of the stream."""
        deadline = time.monotonic() + 10
        while not self._out and not self.closed and time.monotonic() < deadline:
            time.sleep(0.001)
        data, self._out = self._out[:n], self._out[n:]
        self._update()
        return data

    def recv_stderr(self, n: int) -> bytes:
        data, self._err = self._err[:n], self._err[n:]
        self._update()
        return data

    def exit_status_ready(self) -> bool:
        return self.closed and self.exit_status != -1

    def recv_exit_status(self) -> int:
        return self.exit_status

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.active = False
        self.transport.forget(self)
        self._update()

    def release_fds(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class FakeTransport:
    """The subset of ``paramiko.Transport`` the daemon uses."""

    remote_version = "SSH-2.0-OpenSSH_9.2p1 fake"

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.active = True
        self.channels: Dict[int, FakeChannel] = {}
        self.opened = 0
        self.all_channels: List[FakeChannel] = []
        #: Slots of closed channels not yet freed: how many more opens each holds out.
        self.held: List[int] = []
        self.refused = 0

    def is_active(self) -> bool:
        return self.active

    def _new_channel(self) -> FakeChannel:
        if not self.active:
            raise paramiko.SSHException("SSH session not active")
        occupied = len(self.channels) + len(self.held)
        self.held = [opens - 1 for opens in self.held if opens > 1]
        if occupied >= self.server.max_sessions:
            self.refused += 1
            if self.server.refusal_as_text:
                raise paramiko.SSHException("Unable to open channel.")
            raise paramiko.ChannelException(paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, "open failed")
        self.opened += 1
        chan = FakeChannel(self, self.opened)
        self.channels[chan.remote_chanid] = chan
        self.all_channels.append(chan)
        return chan

    def open_session(
        self, window_size: Optional[int] = None, max_packet_size: Optional[int] = None, timeout: Optional[float] = None
    ) -> FakeChannel:
        return self._new_channel()

    def open_channel(
        self,
        kind: str,
        dest_addr: Optional[Tuple[str, int]] = None,
        src_addr: Optional[Tuple[str, int]] = None,
        timeout: Optional[float] = None,
    ) -> FakeChannel:
        if kind == "direct-tcpip" and self.server.refuse_forwarding:
            raise paramiko.ChannelException(
                paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, "administratively prohibited"
            )
        if dest_addr is not None:
            self.server.forwarded.append(dest_addr)
        return self._new_channel()

    def _send_user_message(self, m: paramiko.Message) -> None:
        message = paramiko.Message(m.asbytes())
        message.get_byte()
        chanid = message.get_int()
        request = message.get_text()
        message.get_boolean()
        if request == "exec":
            self.channels[chanid]._exec(message.get_text())

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> Optional[paramiko.Message]:
        return paramiko.Message() if self.active else None

    def forget(self, chan: FakeChannel) -> None:
        if self.channels.pop(chan.remote_chanid, None) is not None and self.server.slot_held_opens:
            self.held.append(self.server.slot_held_opens)

    def die(self) -> None:
        """The connection is cut: every channel closes with no exit status."""
        self.active = False
        for chan in list(self.channels.values()):
            chan._remote_close()

    def close(self) -> None:
        self.die()

    def release_fds(self) -> None:
        for chan in self.all_channels:
            chan.release_fds()


class FakeSFTP:
    """The subset of ``paramiko.SFTPClient`` the daemon uses, over a directory standing for the remote side."""

    def __init__(self, over: Union[FakeTransport, FakeChannel]) -> None:
        """Over a channel whose sftp subsystem started (as ``SFTPClient(chan)``), or a transport."""
        self.channel = over if isinstance(over, FakeChannel) else None
        self.transport = over.get_transport() if isinstance(over, FakeChannel) else over
        self.server = self.transport.server
        self.closed = False

    def get_channel(self) -> Optional[FakeChannel]:
        return self.channel

    def _copy(self, source: str, dest: str) -> None:
        cut = self.server.cut_after
        if cut is None or self.server.cuts == 0:
            shutil.copyfile(source, dest)
            return
        if self.server.cuts is not None:
            self.server.cuts -= 1
        with open(source, "rb") as src, open(dest, "wb") as out:
            out.write(src.read(cut))
        self.transport.die()
        raise EOFError()

    def put(self, local: str, remote: str, confirm: bool = True) -> None:
        if not os.path.dirname(remote) or not os.path.isdir(os.path.dirname(remote)):
            raise FileNotFoundError(2, "No such file", remote)
        self._copy(local, remote)

    def get(self, remote: str, local: str) -> None:
        if not os.path.exists(remote):
            raise FileNotFoundError(2, "No such file", remote)
        self._copy(remote, local)

    def stat(self, remote: str) -> os.stat_result:
        return os.stat(remote)

    def posix_rename(self, source: str, dest: str) -> None:
        os.replace(source, dest)

    def rename(self, source: str, dest: str) -> None:
        os.rename(source, dest)

    def remove(self, path: str) -> None:
        if not self.transport.active:
            raise EOFError()
        os.unlink(path)

    def close(self) -> None:
        self.closed = True
        if self.channel is not None:
            self.channel.close()

    @classmethod
    def from_transport(
        cls, transport: FakeTransport, window_size: Optional[int] = None, max_packet_size: Optional[int] = None
    ) -> FakeSFTP:
        if transport.server.sftp_root is None:
            raise paramiko.SSHException("subsystem request failed")  # no SFTP subsystem: the channel lives on
        return cls(transport)
