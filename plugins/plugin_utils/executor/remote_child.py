# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor's processes below its parent: per-payload-tree templates and the child of each task.

Standard library only, Python 3.8+: sent to the managed host ahead of ``remote.py``, as one source.
A template imports the shared ``ansible.module_utils`` of a payload once and forks one child per
task; the child becomes exactly the plain run's ``python3`` reading the wrapper from stdin. The
shared tree is here too: the hash that names a payload's template, and the zip it imports from.
A template also compiles each payload's other sources once, for its children (:class:`_Compiled`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import warnings
import zipfile
import zipimport
from types import CodeType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO

if TYPE_CHECKING:
    import io
    from importlib.machinery import ModuleSpec
    from types import ModuleType

CHUNK = 65536
#: What a template imports from the payload: the chain the wrapper's loader imports.
PRELOAD = ("ansible.module_utils._internal._ansiballz._loader",)
#: The sources a template holds compiled for its children (the sum of their sizes; their code takes
#: about three times that); the oldest payload's go first.
MAX_COMPILED_BYTES = 4 * 1024 * 1024
#: The name the template compiles a source under; a child renames the code to its own import's path.
_PLACEHOLDER = "<pooled_ssh payload source>"


def _status_rc(status: int) -> int:
    """What the shell of a plain run reports: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _shell_notice(status: int) -> bytes:
    """The line ``/bin/sh`` (dash) writes to stderr when the command it waited for died of a signal."""
    if not os.WIFSIGNALED(status) or os.WTERMSIG(status) in (signal.SIGINT, signal.SIGPIPE):
        return b""
    text = signal.strsignal(os.WTERMSIG(status)) or f"Signal {os.WTERMSIG(status)}"
    return (text + (" (core dumped)" if os.WCOREDUMP(status) else "") + "\n").encode()


# -- the task child ------------------------------------------------------------------------------


class _TaskFirst:
    """Finds ``ansible.*`` outside ``module_utils`` in the task's own payload, never in the template's.

    The template holds ``ansible`` imported from its own zip; the module itself (and anything else the
    payload carries beside the shared tree) must come from the zip this task's wrapper put first on
    ``sys.path``, exactly as in a fresh interpreter.
    """

    @staticmethod
    def find_spec(
        fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[ModuleSpec]:
        parts = fullname.split(".")
        if parts[0] != "ansible" or len(parts) < 2 or parts[1] == "module_utils":
            return None
        from importlib.machinery import PathFinder

        sub = os.path.join(*parts[:-1])
        return PathFinder.find_spec(fullname, [os.path.join(p, sub) for p in sys.path if p])


def _stdio(fd: int, like: TextIO, reading: bool) -> io.TextIOWrapper:
    """A standard stream on ``fd`` configured as the interpreter configured ``like`` at start."""
    import io

    buffered = hasattr(like.buffer, "raw")
    raw = io.FileIO(fd, "rb" if reading else "wb", closefd=False)
    raw.name = like.name
    buf = io.BufferedReader(raw) if reading else io.BufferedWriter(raw) if buffered else raw
    return io.TextIOWrapper(
        buf,
        encoding=like.encoding,
        errors=like.errors,
        newline="\n",
        line_buffering=bool(like.line_buffering),
        write_through=not buffered and not reading,
    )


def _child(
    fds: Sequence[int],
    req: Dict[str, Any],
    base_env: Dict[str, str],
    start: Dict[str, Any],
    source: bytes,
    compiled: Dict[bytes, CodeType],
) -> None:
    """Become the plain run's ``python3`` reading the wrapper from stdin; never returns."""
    rc = 1
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, start["maxfd"])
        os.umask(start["umask"])
        os.chdir(start["cwd"])
        env = dict(base_env)
        env.update(req.get("env") or {})
        os.environ.clear()
        os.environ.update(env)
        if "TZ" in (req.get("env") or {}):
            import time

            time.tzset()
        if "tempfile" in sys.modules:
            vars(sys.modules["tempfile"])["tempdir"] = None
        # typeshed marks sys.__stdin__ & co. Final; the child sets them, as a fresh interpreter has them.
        sys.stdin = sys.__stdin__ = _stdio(0, start["stdio"][0], True)  # type: ignore[misc]
        sys.stdout = sys.__stdout__ = _stdio(1, start["stdio"][1], False)  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = _stdio(2, start["stdio"][2], False)  # type: ignore[misc]
        sys.argv = [""]
        if hasattr(sys, "orig_argv"):
            sys.orig_argv = sys.orig_argv[:1]
        sys.meta_path.insert(0, _TaskFirst())
        if compiled:
            _use_compiled(compiled.get)
        import builtins
        import importlib.machinery
        import types

        main = types.ModuleType("__main__")
        main.__dict__.update(
            __loader__=importlib.machinery.BuiltinImporter,
            __spec__=None,
            __package__=None,
            __annotations__={},
            __builtins__=builtins,
            __file__="<stdin>",
            __cached__=None,
        )
        sys.modules["__main__"] = main
    except BaseException:
        os._exit(70)
    try:
        code = compile(source, "<stdin>", "exec")
        del source
        exec(code, main.__dict__)
        rc = 0
    except SystemExit as e:
        rc = _exit_code(e)
    except KeyboardInterrupt:
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        rc = 1
    os._exit(_finish(rc))


def _exit_code(e: SystemExit) -> int:
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(str(code) + "\n")
    return 1


def _finish(rc: int = 0) -> int:
    """What the interpreter does at exit: threads joined, exit handlers run, streams flushed."""
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(BaseException):
            shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            rc = 120
    return rc


# -- a payload's sources, compiled once -----------------------------------------------------------


class _Compiled:
    """Each payload's Python sources, compiled once by the template before it forks, for its children.

    A child imports the module and the ``module_utils`` its template did not from its own payload zip,
    and a fresh interpreter compiles each of those sources again for every task: for a module of a
    dozen sources that is about half of what a task costs the host once the template is warm.
    Compiling runs nothing of the source, so the template may do it ahead. The key is the source's
    bytes themselves, so a changed file can never be given the code of another.
    """

    def __init__(self) -> None:
        self.payloads: collections.OrderedDict[str, Dict[bytes, CodeType]] = collections.OrderedDict()
        self.size = 0

    def of(self, key: str, zip_text: bytes, given: Dict[bytes, CodeType]) -> Dict[bytes, CodeType]:
        """The compiled sources of the payload with zip hash ``key`` (``zip_text``, its base64 zip),
        taking the controller's code (``given``, by each source's SHA-256) where it has one."""
        codes = self.payloads.get(key)
        if codes is None:
            codes = _compile_payload(zip_text, given)
            self.payloads[key] = codes
            self.size += sum(len(s) for s in codes)
            while self.size > MAX_COMPILED_BYTES and len(self.payloads) > 1:
                _key, old = self.payloads.popitem(last=False)
                self.size -= sum(len(s) for s in old)
        self.payloads.move_to_end(key)
        return codes


def _compile_payload(zip_text: bytes, given: Dict[bytes, CodeType]) -> Dict[bytes, CodeType]:
    """Code for each source of the payload a child may import from it, compiled as zipimport would
    (or by the controller, for this bytecode: ``given``, by the source's SHA-256).

    Left out: what the template imported already (a child never imports it again), and any source
    whose compiling warns (a fresh interpreter shows that warning on the module's stderr, so the child
    compiles it itself and shows it too; the controller leaves those out as well).
    """
    import base64
    import io

    compile_source: Optional[Callable[[str, bytes], CodeType]] = getattr(zipimport, "_compile_source", None)
    codes: Dict[bytes, CodeType] = {}
    if compile_source is None:
        return codes
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_text))) as zf:
        for name in zf.namelist():
            if not name.endswith(".py") or (_shared_entry(name) and _module_name(name) in sys.modules):
                continue
            source = zf.read(name)
            known = given.get(hashlib.sha256(source).digest())
            if known is not None:
                codes[source] = known
                continue
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                try:
                    code = compile_source(_PLACEHOLDER, source)
                except Exception:  # any of them: the child's own import meets it, as a plain run's would
                    continue
            if not warned:
                codes[source] = code
    return codes


def _module_name(entry: str) -> str:
    parts = entry[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _use_compiled(lookup: Callable[[bytes], Optional[CodeType]]) -> Optional[Callable[[str, bytes], CodeType]]:
    """Have zipimport take ``lookup(source)``'s code for a source where it has one, under the path the
    import gives it (tracebacks and warnings name the task's own payload, as in a plain run); the
    compile step it replaced (to put back), None when there is none to replace.

    zipimport is the loader of a payload's modules in a plain run too; only its compile step is
    replaced, and only for the exact bytes the code was compiled from."""
    original: Optional[Callable[[str, bytes], CodeType]] = getattr(zipimport, "_compile_source", None)
    if original is None:
        return None

    def _compile_source(pathname: str, source: bytes) -> CodeType:
        code = lookup(source)
        return original(pathname, source) if code is None else _renamed(code, pathname)

    vars(zipimport)["_compile_source"] = _compile_source
    return original


def _load_codes(blob: bytes) -> Dict[bytes, CodeType]:
    """The controller's code for a payload's sources (``bytecode.py``), by each source's SHA-256;
    nothing from a blob that is not exactly that (the host then compiles, as without it)."""
    import marshal

    if not blob:
        return {}
    try:
        codes = marshal.loads(blob)
    except Exception:
        return {}
    if not isinstance(codes, dict):
        return {}
    return {k: v for k, v in codes.items() if isinstance(k, bytes) and len(k) == 32 and isinstance(v, CodeType)}


def _renamed(code: CodeType, filename: str) -> CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


# -- a payload's shared tree ---------------------------------------------------------------------


def module_utils_hash(zip_text: bytes) -> str:
    """The content hash of a payload's ``ansible.module_utils`` tree: what a template imports from."""
    import base64
    import io

    digest = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_text))) as zf:
        for name in sorted(zf.namelist()):
            if _shared_entry(name):
                data = zf.read(name)
                digest.update(b"%d:%s%d:" % (len(name), name.encode(), len(data)))
                digest.update(data)
    return digest.hexdigest()


def _shared_entry(name: str) -> bool:
    """The part of a payload a template imports: ``ansible`` and its ``module_utils``, not the module."""
    return name == "ansible/__init__.py" or name.startswith("ansible/module_utils/")


def write_shared_tree(directory: str, tree: str, zip_text: bytes) -> str:
    """The path of a zip of the payload's shared tree (module_utils hash ``tree``) in ``directory``,
    written once per tree: a template puts it on ``sys.path`` to import from."""
    import base64
    import io

    zip_path = os.path.join(directory, f"mu-{tree[:32]}.zip")
    if not os.path.exists(zip_path):
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_text))) as src:
            partial = zip_path + ".part"
            with zipfile.ZipFile(partial, "w") as dst:
                for info in src.infolist():
                    if _shared_entry(info.filename):
                        # Stored, not deflated: a template imports it once, right away, on the same host;
                        # deflating it again cost more CPU than the rest of writing it (~16 ms of ~20).
                        entry = zipfile.ZipInfo(info.filename, info.date_time)
                        entry.external_attr = info.external_attr
                        dst.writestr(entry, src.read(info.filename))
            os.replace(partial, zip_path)
    return zip_path


# -- templates ------------------------------------------------------------------------------------


def _send_msg(sock: socket.socket, obj: Dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    else:
        sock.sendall(data)


class _MsgReader:
    """Length-prefixed JSON messages (and passed descriptors) on a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: List[int] = []

    def read(self) -> bool:
        """Take what is there; False at end of stream."""
        size = struct.calcsize("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(CHUNK, socket.CMSG_SPACE(8 * size))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(payload) // size
                self.fds.extend(struct.unpack(f"{count}i", payload[: count * size]))
        self.buf += data
        return bool(data)

    def messages(self) -> Iterator[Dict[str, Any]]:
        """Complete messages; one with a ``size`` carries that many raw bytes after it, as ``blob``."""
        while len(self.buf) >= 4:
            (size,) = struct.unpack(">I", self.buf[:4])
            if len(self.buf) < 4 + size:
                return
            msg = json.loads(self.buf[4 : 4 + size])
            end = 4 + size + msg.get("size", 0)
            if len(self.buf) < end:
                return
            msg["blob"] = self.buf[4 + size : end]
            self.buf = self.buf[end:]
            yield msg


def _template_main(
    sock: socket.socket, zip_path: str, base_env: Dict[str, str], start: Dict[str, Any], code_blob: bytes
) -> None:
    """A per-payload-tree forker: imports the shared ``module_utils`` once, forks one child per task.

    ``code_blob``: the controller's code for its first payload's sources, if it sent any."""
    import gc

    given = _load_codes(code_blob)
    original = _use_compiled(lambda source: given.get(hashlib.sha256(source).digest())) if given else None
    sys.path.insert(0, zip_path)
    try:
        for name in PRELOAD:
            __import__(name)
    except BaseException:  # an old target's basic exits at import: the child then reports that
        for name in [m for m in sys.modules if m == "ansible" or m.startswith("ansible.")]:
            del sys.modules[name]
    finally:
        sys.path.remove(zip_path)
        if original is not None:
            vars(zipimport)["_compile_source"] = original
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()  # the children share these pages instead of touching them with every collection
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    reader = _MsgReader(sock)
    compiled = _Compiled()
    pids: Dict[int, int] = {}
    _send_msg(sock, {"t": "ready"})
    while True:
        try:
            readable, _w, _x = select.select([sock.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            os.read(wake_r, 512)
        while pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid = pids.pop(pid, None)
            if rid is not None:
                _send_msg(
                    sock, {"t": "exit", "id": rid, "rc": _status_rc(status), "notice": _shell_notice(status).decode()}
                )
        if sock.fileno() in readable:
            if not reader.read():
                os._exit(0)
            for msg in reader.messages():
                if msg["t"] == "kill":
                    for pid, rid in list(pids.items()):
                        if rid == msg["id"]:
                            _kill_group(pid)
                    continue
                fds, reader.fds = reader.fds[:3], reader.fds[3:]
                req = msg["req"]
                split = len(msg["blob"]) - msg.get("codes", 0)
                zip_text = msg["blob"][:split]
                if split < len(msg["blob"]):
                    given = _load_codes(msg["blob"][split:])
                source = req["head"].encode("latin-1") + zip_text + req["tail"].encode("latin-1")
                try:
                    codes = compiled.of(msg["zip"], zip_text, given)
                except Exception:  # only a speed-up: a payload it cannot read runs uncompiled, as plain
                    codes = {}
                given = {}  # each payload's are used once, by compiled.of
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    _child(fds, req, base_env, start, source, codes)
                for fd in fds:
                    os.close(fd)
                pids[pid] = msg["id"]
                _send_msg(sock, {"t": "started", "id": msg["id"], "pid": pid})


def _kill_group(pid: int) -> None:
    for target in (-pid, pid):
        try:
            os.kill(target, signal.SIGKILL)
            return
        except OSError:
            continue
