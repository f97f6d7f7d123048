# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The conversation between a worker and the daemon, as typed messages.

::

    worker                                   daemon
    {"op": "hello", "version": 2}      ->    {"t": "hello", "version": 2, "pid": ...}
    {"op": "bind", "id": 1, "conn": {...}, "pool": {...}}
                                       ->    {"t": "bound", "re": 1}
    {"op": "exec", "id": 2, "cmd": ...} + stdin
                                       ->    {"t": "started", "re": 2, ...}
    {"op": "stdin", "id": 2} + bytes   ->    {"t": "out", "re": 2} + bytes ...
    {"op": "eof", "id": 2}             ->    {"t": "exit", "re": 2, "rc": 0}

The connection spec and pool settings go once per worker connection, in ``bind``; every later
request carries an operation id, and every reply the id of the request it answers (``re``).
``stdin``, ``eof`` and ``cancel`` name the operation they belong to: the daemon drops them
when that operation is over (or unknown), so a late frame is never read as a new request.
Each message body is a dataclass whose fields declare their wire rules (:mod:`.fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from ..errors import ErrorKind
from ..pool.settings import PoolSettings
from .fields import Malformed, parse, to_wire, wire
from .spec import ConnectionSpec

_MAX_SECONDS = 10 * 365 * 86400


class Op(str, Enum):
    """A request's ``op``."""

    HELLO = "hello"
    BIND = "bind"
    EXEC = "exec"
    PUT = "put"
    FETCH = "fetch"
    EVICT = "evict"
    STATS = "stats"
    STATUS = "status"
    STOP = "stop"
    PING = "ping"
    #: A pipelined module run through the transport's remote executor (plugin_utils/executor).
    XRUN = "xrun"
    #: Open the bound spec's transport in the background for a later request (daemon/warm.py).
    WARM = "warm"
    #: Frames that belong to a running exec (named by its id), never requests of their own.
    STDIN = "stdin"
    EOF = "eof"
    CANCEL = "cancel"


STREAM_OPS = frozenset({Op.STDIN, Op.EOF, Op.CANCEL})
#: Requests that need a bound connection spec.
BOUND_OPS = frozenset({Op.EXEC, Op.PUT, Op.FETCH, Op.XRUN})


class Reply(str, Enum):
    """A reply's ``t``."""

    HELLO = "hello"
    BOUND = "bound"
    STARTED = "started"
    OUT = "out"
    ERR = "err"
    EXIT = "exit"
    DONE = "done"
    OK = "ok"
    PONG = "pong"
    STATS = "stats"
    STATUS = "status"
    ERROR = "error"
    #: An ``xrun`` that did not start anything: the worker runs the command the plain way.
    FALLBACK = "fallback"


class Message:
    """A message body: ``to_wire``/``from_wire`` follow from the fields' declared rules."""

    def to_wire(self) -> Dict[str, Any]:
        return to_wire(self)

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> Any:
        return parse(cls, data)


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    version: int = wire((int,), required=True)
    pid: Optional[int] = wire((int, type(None)))


@dataclass(frozen=True)
class Bind(Message):
    """The connection spec and pool settings of every later request on this worker connection."""

    spec: ConnectionSpec
    settings: PoolSettings
    #: The parts of a bind on the wire and what each is (their fields declare their own rules).
    PARTS: ClassVar[Dict[str, type]] = {"conn": ConnectionSpec, "pool": PoolSettings}

    def to_wire(self) -> Dict[str, Any]:
        return {"conn": self.spec.to_wire(), "pool": self.settings.to_dict()}

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> Bind:
        spec = ConnectionSpec.from_wire(data.get("conn"))
        pool = data.get("pool")
        if pool is not None and not isinstance(pool, dict):
            raise Malformed("pool must be an object")
        try:
            settings = PoolSettings.from_dict(pool or {})
        except ValueError as e:
            raise Malformed(str(e)) from None
        return cls(spec, settings)


@dataclass(frozen=True)
class Exec(Message):
    cmd: str = wire((str,), required=True, problem="must be a string")
    pty: bool = wire((bool,), default=False)
    term: str = wire((str,), default="vt100")
    width: int = wire((int,), default=0, low=0, high=100_000)
    height: int = wire((int,), default=0, low=0, high=100_000)
    #: Seconds; 0: no limit.
    command_timeout: float = wire((float,), default=0.0, low=0, high=_MAX_SECONDS)
    #: The request's payload is all of the command's input.
    eof: bool = wire((bool,), default=True)


@dataclass(frozen=True)
class XRun(Message):
    """A pipelined module run for the remote executor; the payload is the wrapper (head, zip text, tail)."""

    #: Which executor on the transport (interpreter, startup variables, become context).
    key: str = wire((str,), required=True, problem="must be a string")
    #: The command that starts that executor when the transport has none yet.
    start: str = wire((str,), required=True, problem="must be a string")
    head_len: int = wire((int,), required=True, low=0, high=1 << 30)
    zip_len: int = wire((int,), required=True, low=0, high=1 << 30)
    tmp: str = wire((str,), default="~/.ansible/tmp")
    #: The task's ``environment:`` variables, as a JSON object.
    env: str = wire((str,), default="{}")
    #: Seconds; 0: no limit. Past it the executor kills the run's process group.
    command_timeout: float = wire((float,), default=0.0, low=0, high=_MAX_SECONDS)
    #: Seconds without a run after which the daemon stops the executor; 0: never (it lives as
    #: long as its transport).
    idle_timeout: float = wire((float,), default=60.0, low=0, high=_MAX_SECONDS)


@dataclass(frozen=True)
class Fallback(Message):
    reason: str = wire((str,), default="")


@dataclass(frozen=True)
class Transfer(Message):
    """``put`` (local to remote) or ``fetch`` (remote to local)."""

    local: str = wire((str,), required=True, path=True, problem="must be a string")
    remote: str = wire((str,), required=True, path=True, problem="must be a string")
    #: The worker's umask: a fetched file gets the mode ``ssh`` would give it (None: the daemon's own).
    umask: Optional[int] = wire((int, type(None)), low=0, high=0o777)


@dataclass(frozen=True)
class Evict(Message):
    """Close the transports of a host (any field unset matches everything)."""

    host: Optional[str] = wire((str, type(None)))
    port: Optional[int] = wire((int, type(None)), low=1, high=65535)
    user: Optional[str] = wire((str, type(None)))


@dataclass(frozen=True)
class Empty(Message):
    """The body of requests that carry nothing but their op and id."""


REQUESTS: Dict[Op, Any] = {
    Op.BIND: Bind,
    Op.EXEC: Exec,
    Op.PUT: Transfer,
    Op.FETCH: Transfer,
    Op.EVICT: Evict,
    Op.STATS: Empty,
    Op.STATUS: Empty,
    Op.STOP: Empty,
    Op.PING: Empty,
    Op.XRUN: XRun,
    Op.WARM: Empty,
}


def envelope(data: Dict[str, Any]) -> Tuple[Optional[Op], Optional[int]]:
    """A frame's op and operation id, each None when missing or not valid."""
    try:
        op: Optional[Op] = Op(data.get("op"))
    except ValueError:
        op = None
    op_id = data.get("id")
    if isinstance(op_id, bool) or not isinstance(op_id, int) or not 0 < op_id < 2**53:
        op_id = None
    return op, op_id


def request(op: Op, op_id: int, body: Optional[Message] = None) -> Dict[str, Any]:
    return {"op": op.value, "id": op_id, **(body.to_wire() if body is not None else {})}


def check_request(op: Op, data: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the shape of a request (None: nothing); the handlers trust the shape."""
    try:
        REQUESTS[op].from_wire(data)
    except Malformed as e:
        return str(e)
    return None


# -- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelloReply(Message):
    version: int = wire((int,), required=True)
    pid: Optional[int] = wire((int, type(None)))


@dataclass(frozen=True)
class Started(Message):
    hit: bool = wire((bool,), required=True)
    transport: int = wire((int,), required=True)
    waited: float = wire((float,), default=0.0)


@dataclass(frozen=True)
class Exit(Message):
    rc: int = wire((int,), required=True)


@dataclass(frozen=True)
class Done(Message):
    hit: bool = wire((bool,), required=True)
    transport: int = wire((int,), required=True)
    via: Optional[str] = wire((str, type(None)))


@dataclass(frozen=True)
class Closed(Message):
    closed: int = wire((int,), default=0)


@dataclass(frozen=True)
class StatsReply(Message):
    total: Dict[str, Any] = wire((dict,), required=True)
    hosts: Dict[str, Any] = wire((dict,), required=True)


@dataclass(frozen=True)
class StatusReply(Message):
    daemon: Dict[str, Any] = wire((dict,), required=True)
    stats: Dict[str, Any] = wire((dict,), required=True)
    transports: List[Dict[str, Any]] = wire((list,), required=True)


@dataclass(frozen=True)
class ErrorReply(Message):
    kind: str = wire((str,), required=True)
    msg: str = wire((str,), default="")


#: Replies with collections that grow with the pool (a host, a transport each): sent in parts
#: when larger than a frame (:mod:`.parts`), put back together by the client.
GROWING: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    Reply.STATS.value: (("hosts",),),
    Reply.STATUS.value: (("stats", "hosts"), ("transports",)),
}
#: An error's text is cut here: it names a host, a path, a command's first words, never more.
MAX_ERROR_TEXT = 4096


def reply(t: Reply, re: Optional[int], body: Optional[Message] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"t": t.value, "re": re}
    if body is not None:
        out.update(body.to_wire())
    return out


def error(re: Optional[int], kind: ErrorKind, msg: str) -> Dict[str, Any]:
    if len(msg) > MAX_ERROR_TEXT:
        msg = msg[: MAX_ERROR_TEXT - 3] + "..."
    return reply(Reply.ERROR, re, ErrorReply(kind.value, msg))
