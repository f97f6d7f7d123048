# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The xrun operation: a pipelined module run through the leased transport's remote executor.

One executor per pooled transport and executor key (interpreter, startup variables, become
context), started on first use over one session channel of that transport, so it dies with it.
Whatever keeps a run from starting (no executor possible on this host, a payload too large, a
refused start) is a ``fallback`` reply: nothing ran, and the worker runs the command the plain way.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

from ..errors import ErrorKind, PoolError
from ..executor.bytecode import COMPILER
from ..executor.manager import EventKind, Executor, ExecutorAbandoned, ExecutorError, ExecutorTimeout
from ..ssh.paramiko_guard import paramiko
from ..ssh.transport import CHANNEL_TIMEOUT, PooledTransport, exec_accepted, open_refused, send_exec
from ..wire import messages as msgs
from ..wire.frames import peer_closed
from .relay import lost_while_running, timed_out

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("pooled_ssh.daemon")


@dataclass
class ExecutorCounters:
    """What the daemon's status reports of its executors."""

    started: int = 0
    runs: int = 0
    #: Runs whose payload the executor already held: only its hash crossed the wire.
    cache_hits: int = 0
    fallbacks: int = 0
    lost: int = 0
    #: Runs past their command_timeout: the executor killed them.
    timeouts: int = 0
    #: Payloads sent with their sources' code compiled on the controller, for the host's bytecode.
    compiled_on_controller: int = 0


#: The shortest wait of a read on an executor's channel (seconds).
MIN_READ_WAIT = 0.05
COUNTERS = ExecutorCounters()
_lock = threading.Lock()
#: Per transport, per key: the executor, or why none can run there (asked once per transport).
_executors: weakref.WeakKeyDictionary[PooledTransport, Dict[str, Union[Executor, str]]] = weakref.WeakKeyDictionary()
#: Per transport, per key: held while an executor starts there.
_starting: weakref.WeakKeyDictionary[PooledTransport, Dict[str, threading.Lock]] = weakref.WeakKeyDictionary()


class _ChannelIO:
    """The executor manager's channel: a Paramiko session channel running the bootstrap.

    Paramiko has one timeout per channel for both directions, and the run that reads sets it for
    each read: a write therefore retries a send that timed out (nothing was sent then) instead of
    giving up with half a frame written. A closed channel still raises.
    """

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan

    def read(self, size: int, timeout: Optional[float]) -> bytes:
        # Never 0 (non-blocking), which would make a concurrent write spin.
        self.chan.settimeout(None if timeout is None else max(timeout, MIN_READ_WAIT))
        return self.chan.recv(size)

    def write(self, data: bytes) -> None:
        while data:
            try:
                sent = self.chan.send(data)
            except TimeoutError:
                continue
            data = data[sent:]

    def close(self) -> None:
        self.chan.close()

    def ended(self) -> bool:
        return bool(self.chan.closed or self.chan.eof_received)


def counters() -> Dict[str, int]:
    return asdict(COUNTERS)


class _NotNow(str):
    """Why no executor started this time, not remembered: the next run on the transport tries again."""


#: Why no executor runs on a transport whose server allows few sessions: it would hold one for good.
FEW_SESSIONS = "the server allows too few sessions (MaxSessions) to keep one for an executor"


def _start(pt: PooledTransport, req: msgs.XRun) -> Union[Executor, str]:
    try:
        chan = pt.open_channel(CHANNEL_TIMEOUT)
    except (paramiko.SSHException, EOFError, OSError) as e:
        # A refusal on a live transport says the server is full now, not that no executor can run here.
        why = f"no channel for the executor ({e})"
        return _NotNow(why) if open_refused(pt, e) else why
    try:
        chan.settimeout(CHANNEL_TIMEOUT)
        # The source right behind the exec request, as the exec path sends a command's input: one
        # round trip less. The reply comes before any output, so a refused exec is still known as such.
        send_exec(chan, req.start)
        executor = Executor(_ChannelIO(chan), tmp=req.tmp, compiler=COMPILER.codes)
        executor.begin()
        if not exec_accepted(chan):
            chan.close()
            return "the server refused the executor's exec request"
        hello = executor.start(timeout=CHANNEL_TIMEOUT)
    except ExecutorError as e:
        chan.close()
        return str(e)
    except (paramiko.SSHException, EOFError, OSError) as e:
        chan.close()
        return f"the executor did not start ({e})"
    COUNTERS.started += 1
    python = hello.get("python")
    log.info(
        "%s: remote executor started (Python %s, pid %s)",
        pt.label,
        ".".join(str(v) for v in python) if isinstance(python, list) else "?",
        hello.get("pid"),
    )
    return executor


def _executor(pt: PooledTransport, req: msgs.XRun) -> Tuple[Optional[Executor], str]:
    with _lock:
        starting = _starting.setdefault(pt, {}).setdefault(req.key, threading.Lock())
    # One start at a time per transport and key: two first runs at once (free strategy, async,
    # delegation) would otherwise both start one, and one of them would be left running idle.
    with starting:
        with _lock:
            known = _executors.setdefault(pt, {}).get(req.key)
        if isinstance(known, str):
            return None, known
        if known is not None and known.take(req.idle_timeout):
            return known, ""
        started = _start(pt, req) if not pt.sessions_tight else FEW_SESSIONS
        if isinstance(started, _NotNow):
            return None, started
        if isinstance(started, Executor):
            started.take(req.idle_timeout)
        with _lock:
            _executors.setdefault(pt, {})[req.key] = started
    return (None, started) if isinstance(started, str) else (started, "")


def close_idle_executors(pt: PooledTransport) -> bool:
    """Close the transport's executors that run nothing, giving their sessions back to the server
    (it refused a channel: it allows fewer sessions than the pool thought). Whether any closed."""
    return _close_idle({pt: _known(pt)}, expired_only=False) > 0


def expire_idle_executors() -> int:
    """Close every executor that ran nothing for its ``remote_executor_idle_timeout``: it gives the
    host back its memory (an interpreter and its templates) and the server its session. The next
    module on that transport starts a new one. How many closed."""
    with _lock:
        every = {pt: dict(known) for pt, known in _executors.items()}
    return _close_idle(every, expired_only=True)


def _known(pt: PooledTransport) -> Dict[str, Union[Executor, str]]:
    with _lock:
        return dict(_executors.get(pt, {}))


def _close_idle(known: Dict[PooledTransport, Dict[str, Union[Executor, str]]], expired_only: bool) -> int:
    closed = 0
    for pt, executors in known.items():
        for key, executor in executors.items():
            if isinstance(executor, Executor) and executor.close_if_idle(expired_only=expired_only):
                closed += 1
                log.debug("%s: remote executor closed (%s)", pt.label, "idle" if expired_only else "session wanted")
                with _lock:
                    if _executors.get(pt, {}).get(key) is executor:
                        del _executors[pt][key]
    return closed


def _env(text: str) -> Optional[Dict[str, str]]:
    try:
        env = json.loads(text)
    except ValueError:
        return None
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return None
    return env


def run_xrun(session: Session, op_id: int, req: msgs.XRun, payload: bytes) -> None:
    binding = session.bound()
    env = _env(req.env)
    if env is None or req.head_len + req.zip_len > len(payload):
        raise PoolError("malformed xrun request: env or lengths", kind=ErrorKind.PROTOCOL)
    head = payload[: req.head_len]
    zip_text = payload[req.head_len : req.head_len + req.zip_len]
    tail = payload[req.head_len + req.zip_len :]
    lease = binding.lease()
    broken = False
    try:
        executor, why = _executor(lease.conn, req)
        if executor is None:
            COUNTERS.fallbacks += 1
            session.send(msgs.reply(msgs.Reply.FALLBACK, op_id, msgs.Fallback(why)))
            return
        session.send(
            msgs.reply(msgs.Reply.STARTED, op_id, msgs.Started(lease.hit, lease.entry.id, round(lease.waited, 6)))
        )
        hits, compiled = executor.stats.cache_hits, executor.stats.compiled_here
        try:
            runs = executor.run(
                head,
                zip_text,
                tail,
                env,
                timeout=req.command_timeout or None,
                abandoned=lambda: peer_closed(session.sock),
            )
            for kind, data in runs:
                if kind is EventKind.EXIT:
                    COUNTERS.runs += 1
                    COUNTERS.cache_hits += executor.stats.cache_hits - hits
                    COUNTERS.compiled_on_controller += executor.stats.compiled_here - compiled
                    session.send(msgs.reply(msgs.Reply.EXIT, op_id, msgs.Exit(int(data))))
                else:
                    reply = msgs.Reply.OUT if kind is EventKind.OUT else msgs.Reply.ERR
                    session.send(msgs.reply(reply, op_id), data)  # type: ignore[arg-type]
        except ExecutorAbandoned:
            log.info("worker went away mid-command; the remote executor kills its module")
            return
        except ExecutorTimeout as e:
            COUNTERS.timeouts += 1
            where = binding.spec.where
            if not e.killed:  # no word back from the host: as the plain path, the host may be gone
                log.info("%s: command_timeout of %gs reached; the executor did not confirm the kill", where, e.seconds)
                executor.close()
                raise PoolError(timed_out(where, e.seconds), kind=ErrorKind.TIMEOUT) from None
            log.info("%s: command_timeout of %gs reached; the executor killed the module", where, e.seconds)
            raise PoolError(
                timed_out(where, e.seconds, "the remote executor killed the module and its children"),
                kind=ErrorKind.KILLED_AT_TIMEOUT,
            ) from None
        except ExecutorError as e:
            if not e.started:
                COUNTERS.fallbacks += 1
                session.send(msgs.reply(msgs.Reply.FALLBACK, op_id, msgs.Fallback(str(e))))
                return
            COUNTERS.lost += 1
            pt = lease.conn
            broken = not pt.is_active()
            log.info("%s: %s", binding.spec.where, e)
            # Worded as the plain path's loss: the same cause, the same advice.
            raise PoolError(
                lost_while_running(binding.spec.where, pt, alive=not broken), kind=ErrorKind.UNKNOWN_OUTCOME
            ) from None
    finally:
        lease.release(broken=broken)
