# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What can go wrong, as kinds shared by the daemon, the client and the plugins.

A kind travels on the wire as its string value and decides how Ansible reports the failure:
``unreachable`` kinds make the host UNREACHABLE, the others fail the task. The kind itself
knows which it is, so no list has to be kept in step with the enum.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """Why a request failed; the value is what the wire carries."""

    unreachable: bool

    def __new__(cls, value: str, unreachable: bool) -> ErrorKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.unreachable = unreachable
        return member

    #: TCP, handshake or channel failure: the host cannot be reached.
    CONNECT = ("connect", True)
    #: The server refused our credentials (Ansible's authentication failure, itself unreachable).
    AUTH = ("auth", True)
    #: The host key is unknown, changed or revoked.
    HOSTKEY = ("hostkey", True)
    #: The pool is at its limits for this host and the wait ran out.
    EXHAUSTED = ("exhausted", True)
    #: The transport died while the command ran: it may have run; never re-run.
    UNKNOWN_OUTCOME = ("unknown_outcome", True)
    #: The worker lost the daemon in the middle of a request.
    DAEMON_LOST = ("daemon_lost", True)
    #: The command did not finish within command_timeout.
    TIMEOUT = ("timeout", True)
    #: A module run by the remote executor did not finish within command_timeout and was killed there:
    #: the transport is fine, so the task fails and the host stays in the play.
    KILLED_AT_TIMEOUT = ("killed_at_timeout", False)
    #: The daemon is stopping.
    SHUTDOWN = ("shutdown", True)
    #: A malformed or out-of-order frame.
    PROTOCOL = ("protocol", True)
    #: The daemon cannot take another client now.
    BUSY = ("busy", True)
    #: The daemon cannot be reached or started at all.
    UNAVAILABLE = ("unavailable", True)
    #: The server refused this one request (no SFTP subsystem, exec refused) on a live transport.
    REFUSED = ("refused", False)
    #: A local or remote file is missing or not accessible.
    FILE = ("file", False)
    #: A request or reply larger than a frame may carry (a command line over 256 KiB...).
    TOO_LARGE = ("too_large", False)
    #: A bug in the daemon.
    INTERNAL = ("internal", False)
    #: The worker's own deadline for the next reply passed (a become prompt that never came).
    RECV_TIMEOUT = ("recv_timeout", False)

    @classmethod
    def from_wire(cls, value: object) -> ErrorKind:
        """The kind a reply names; one this side does not know fails the task (never hides a host)."""
        for kind in cls:
            if kind.value == value:
                return kind
        return cls.INTERNAL

    def __str__(self) -> str:
        return str(self.value)


class PoolError(Exception):
    """A request the daemon could not serve; ``kind`` tells the worker how to report it."""

    default_kind = ErrorKind.CONNECT

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind or self.default_kind


class PoolFailure(Exception):
    """Client side: the daemon reported an error for one request (or the worker lost it midway)."""

    def __init__(self, kind: ErrorKind | str, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind if isinstance(kind, ErrorKind) else ErrorKind.from_wire(kind)


class PoolUnavailable(Exception):
    """Client side: the daemon cannot be reached or started; the message says why and what to do."""

    kind = ErrorKind.UNAVAILABLE
