# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The target-side executor: one Python kept alive on a managed host to run pipelined modules.

It is sent as source over one SSH session channel and speaks framed requests on its stdin and
stdout. Standard library only, Python 3.8+: this file runs on the managed host, never on the
controller. Each module runs in a child forked for that task alone, from a template process that
has already imported the ``ansible.module_utils`` of that payload, so the child skips those
imports; nothing a task does reaches the next one. No listening socket; what it writes lives in
one 0700 directory under Ansible's remote temp directory and is removed when it exits, also when
its stdin closes (the transport is gone).

Frames: a 9-byte header (body length, kind, request id; big-endian) then the body.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import zipfile
from typing import Any, Dict, Iterator, List, Set, Tuple, Union

from .remote_child import CHUNK, _MsgReader, _send_msg, _template_main, module_utils_hash, write_shared_tree

VERSION = 1
HEADER = struct.Struct(">IBI")
#: The largest frame either side accepts: a module payload (its base64 zip) is the largest body.
MAX_FRAME = 64 * 1024 * 1024
#: What the executor holds of payloads, templates and runs at once; the oldest payload goes first.
MAX_PAYLOAD_BYTES = 128 * 1024 * 1024
MAX_TEMPLATES = 8
MAX_RUNS = 64
DIR_PREFIX = "pooled-ssh-exec-"

# Controller -> executor.
K_INIT = 1  # json: {"version", "tmp"}
K_PUT = 2  # 32-byte sha256 of the zip text, then the zip text
K_RUN = 3  # json: {"zip", "head", "tail", "env", "key"}
K_CANCEL = 4  # kill that run's process group
K_CODE = 5  # 4-byte bytecode magic, 32-byte sha256 of a zip text, then its sources' code (marshal)
# Executor -> controller.
K_HELLO = 10  # json: {"version", "python", "magic", "optimize", "ranges", "pid", "dir"} or {"error"}
K_NEED = 11  # the run's payload is not held: send it, then the run again (nothing started)
K_OUT = 12
K_ERR = 13
K_EXIT = 14  # json: {"rc"}; all output of that run came before it
K_FAIL = 15  # json: {"started", "message"}: the run did not complete through the executor

#: What the wrapper and ``basic`` import from the standard library; the executor imports them once
#: so that templates start faster. Importing them has no effect a fresh interpreter would not have.
# fmt: off
STDLIB = (
    "ast", "base64", "collections", "contextlib", "copy", "datetime", "dataclasses", "enum", "errno",
    "fcntl", "functools", "glob", "grp", "importlib", "importlib.util", "inspect", "io", "itertools",
    "json", "locale", "numbers", "platform", "pwd", "re", "resource", "runpy", "select", "selectors",
    "shlex", "shutil", "signal", "stat", "string", "struct", "subprocess", "syslog", "tempfile",
    "textwrap", "time", "traceback", "types", "typing", "zipfile", "zipimport",
)
# fmt: on


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue


def _frame(kind: int, rid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body), kind, rid) + body


# -- the executor ---------------------------------------------------------------------------------


class _Template:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.reader = _MsgReader(sock)
        self.ready = False
        self.queued: List[Tuple[Dict[str, Any], bytes, List[int]]] = []  # message, zip text, descriptors
        self.runs: Set[int] = set()
        #: The payloads whose controller code this template has (it needs each only once).
        self.coded: Set[str] = set()


class _Run:
    def __init__(self, rid: int, out_fd: int, err_fd: int, template: _Template) -> None:
        self.rid = rid
        self.fds = {out_fd: K_OUT, err_fd: K_ERR}
        self.template = template
        self.started = False
        self.rc = None  # type: int | None
        self.notice = b""


class Executor:
    """The executor's parent: one select loop over its stdin, the runs' output pipes and the templates."""

    def __init__(self, tmp_base: str) -> None:
        self.dir = _make_dir(tmp_base)
        self.base_env = dict(os.environ)
        try:
            maxfd = os.sysconf("SC_OPEN_MAX")
        except (ValueError, OSError):
            maxfd = 1024
        umask = os.umask(0o077)
        os.umask(umask)
        self.start: Dict[str, Any] = {
            "umask": umask,
            "cwd": os.getcwd(),
            "maxfd": max(256, min(maxfd, 65536)),
            "stdio": (sys.stdin, sys.stdout, sys.stderr),
        }
        self.payloads: Dict[str, bytes] = {}  # zip hash -> zip text, oldest first
        #: zip hash -> its sources' code, compiled by the controller for this magic (bytecode.py)
        self.codes: Dict[str, bytes] = {}
        self.trees: Dict[str, str] = {}  # zip hash -> module_utils hash
        self.templates: Dict[str, _Template] = {}  # module_utils hash -> _Template
        self.runs: Dict[int, _Run] = {}
        self.inbuf = b""
        self.closing = False

    # -- framing --

    def send(self, kind: int, rid: int, body: bytes = b"") -> None:
        _write_all(1, _frame(kind, rid, body))

    def send_json(self, kind: int, rid: int, obj: Dict[str, Any]) -> None:
        self.send(kind, rid, json.dumps(obj).encode())

    def frames(self) -> Iterator[Tuple[int, int, bytes]]:
        while len(self.inbuf) >= HEADER.size:
            size, kind, rid = HEADER.unpack_from(self.inbuf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes is over the limit")
            if len(self.inbuf) < HEADER.size + size:
                return
            body = self.inbuf[HEADER.size : HEADER.size + size]
            self.inbuf = self.inbuf[HEADER.size + size :]
            yield kind, rid, body

    # -- requests --

    def on_put(self, body: bytes) -> None:
        digest, data = body[:32], body[32:]
        if hashlib.sha256(data).digest() != digest:
            return  # a corrupt copy is never held: the next run asks again
        key = digest.hex()
        self.payloads.pop(key, None)
        self.payloads[key] = data
        total = sum(len(v) for v in self.payloads.values()) + sum(len(v) for v in self.codes.values())
        while total > MAX_PAYLOAD_BYTES and len(self.payloads) > 1:
            old = next(iter(self.payloads))
            total -= len(self.payloads.pop(old)) + len(self.codes.pop(old, b""))

    def on_code(self, body: bytes) -> None:
        """Code of a payload's sources from the controller: kept only if it is this Python's bytecode."""
        import importlib.util

        if body[:4] == importlib.util.MAGIC_NUMBER and len(body) > 36:
            self.codes[body[4:36].hex()] = body[36:]

    def on_run(self, rid: int, req: Dict[str, Any]) -> None:
        zip_hash = req["zip"]
        zip_text = self.payloads.get(zip_hash)
        if zip_text is None:
            self.send(K_NEED, rid)
            return
        if len(self.runs) >= MAX_RUNS:
            self.send_json(K_FAIL, rid, {"started": False, "message": "too many runs at once"})
            return
        self.payloads[zip_hash] = self.payloads.pop(zip_hash)  # most recently used last
        try:
            tree = self.trees.get(zip_hash) or module_utils_hash(zip_text)
            self.trees[zip_hash] = tree
            template = self.templates.get(tree) or self.spawn_template(tree, zip_hash, zip_text)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            self.send_json(K_FAIL, rid, {"started": False, "message": f"cannot prepare the run: {e}"})
            return
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        os.close(in_w)  # the wrapper was the plain run's whole stdin: the module sees end of file
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        run = _Run(rid, out_r, err_r, template)
        self.runs[rid] = run
        template.runs.add(rid)
        # The zip text follows the request on the template's stream; the template splices the source.
        fields = {"head": req["head"], "tail": req["tail"], "env": req.get("env") or {}}
        # The controller's code of this payload goes once to each template, behind the zip text.
        codes = b"" if zip_hash in template.coded else self.codes.get(zip_hash, b"")
        if codes:
            template.coded.add(zip_hash)
        message = {"t": "run", "id": rid, "zip": zip_hash, "codes": len(codes), "req": fields}
        template.queued.append((message, zip_text + codes, [in_r, out_w, err_w]))
        self.flush_template(template)

    def flush_template(self, template: _Template) -> None:
        if not template.ready:
            return
        while template.queued:
            message, zip_text, fds = template.queued.pop(0)
            try:
                _send_msg(template.sock, dict(message, size=len(zip_text)), fds)
                template.sock.sendall(zip_text)
            except OSError:
                pass  # the template is gone: its end of stream fails the run
            finally:
                for fd in fds:
                    os.close(fd)

    def spawn_template(self, tree: str, zip_hash: str, zip_text: bytes) -> _Template:
        while len(self.templates) >= MAX_TEMPLATES:
            idle = [k for k, t in self.templates.items() if not t.runs]
            if not idle:
                raise ValueError("every template is busy")
            self.drop_template(idle[0])
        zip_path = write_shared_tree(self.dir, tree, zip_text)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                parent_sock.close()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                keep = child_sock.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, self.start["maxfd"])
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                _template_main(child_sock, zip_path, self.base_env, self.start, self.codes.get(zip_hash, b""))
            finally:
                os._exit(0)
        child_sock.close()
        template = _Template(pid, parent_sock)
        if zip_hash in self.codes:
            template.coded.add(zip_hash)  # it has them from its start
        self.templates[tree] = template
        return template

    def drop_template(self, tree: str) -> None:
        template = self.templates.pop(tree)
        template.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(template.pid, 0)

    def on_template(self, tree: str, template: _Template) -> None:
        try:
            alive = template.reader.read()
        except OSError:
            alive = False
        for msg in template.reader.messages():
            kind = msg["t"]
            if kind == "ready":
                template.ready = True
                self.flush_template(template)
            elif kind == "started" and msg["id"] in self.runs:
                self.runs[msg["id"]].started = True
            elif kind == "exit" and msg["id"] in self.runs:
                self.runs[msg["id"]].rc = msg["rc"]
                self.runs[msg["id"]].notice = msg.get("notice", "").encode()
                template.runs.discard(msg["id"])
                self.maybe_done(self.runs[msg["id"]])
        if not alive:
            self.templates.pop(tree, None)
            template.sock.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(template.pid, 0)
            for rid in list(template.runs):
                run = self.runs.pop(rid, None)
                if run is not None:
                    for fd in run.fds:
                        os.close(fd)
                    self.send_json(
                        K_FAIL, rid, {"started": run.started, "message": "the executor's template process exited"}
                    )

    def on_output(self, run: _Run, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if data:
            self.send(run.fds[fd], run.rid, data)
            return
        os.close(fd)
        del run.fds[fd]
        self.maybe_done(run)

    def maybe_done(self, run: _Run) -> None:
        if run.rc is not None and not run.fds and self.runs.pop(run.rid, None) is not None:
            if run.notice:
                self.send(K_ERR, run.rid, run.notice)
            self.send_json(K_EXIT, run.rid, {"rc": run.rc})

    def on_cancel(self, rid: int) -> None:
        run = self.runs.get(rid)
        if run is None:
            return
        queued = [q for q in run.template.queued if q[0]["id"] == rid]
        if queued:  # its template is not ready yet: the run never starts
            run.template.queued.remove(queued[0])
            run.template.runs.discard(rid)
            for fd in queued[0][2] + list(run.fds):
                os.close(fd)
            del self.runs[rid]
            return
        with contextlib.suppress(OSError):
            _send_msg(run.template.sock, {"t": "kill", "id": rid})

    # -- loop --

    def serve(self) -> None:
        os.set_blocking(0, False)
        while True:
            # What each readable descriptor is: stdin (None), a run's output pipe, or a template's socket.
            watch: Dict[int, Union[_Run, Tuple[str, _Template], None]] = {} if self.closing else {0: None}
            for run in self.runs.values():
                for fd in run.fds:
                    watch[fd] = run
            for tree, template in self.templates.items():
                watch[template.sock.fileno()] = (tree, template)
            if self.closing and not self.runs:
                return
            try:
                readable, _w, _x = select.select(list(watch), [], [])
            except InterruptedError:
                continue
            for fd in readable:
                what = watch[fd]
                if fd == 0 and what is None:
                    self.on_stdin()
                elif isinstance(what, _Run):
                    if fd in what.fds:
                        self.on_output(what, fd)
                elif isinstance(what, tuple) and self.templates.get(what[0]) is what[1]:
                    self.on_template(*what)

    def on_stdin(self) -> None:
        try:
            data = os.read(0, 1024 * 1024)
        except BlockingIOError:
            return
        if not data:
            self.closing = True  # transport gone: finish what runs, then exit
            return
        self.inbuf += data
        for kind, rid, body in self.frames():
            if kind == K_PUT:
                self.on_put(body)
            elif kind == K_CODE:
                self.on_code(body)
            elif kind == K_RUN:
                self.on_run(rid, json.loads(body))
            elif kind == K_CANCEL:
                self.on_cancel(rid)

    def close(self) -> None:
        for tree in list(self.templates):
            template = self.templates.pop(tree)
            template.sock.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(template.pid, 0)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _make_dir(tmp_base: str) -> str:
    """A 0700 directory of this executor's own under the remote temp dir; stale ones of dead executors go."""
    import tempfile

    base = os.path.expanduser(os.path.expandvars(tmp_base))
    old = os.umask(0o077)
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    finally:
        os.umask(old)
    for name in os.listdir(base):
        if name.startswith(DIR_PREFIX):
            pid = name[len(DIR_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                import shutil

                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _read_exact(size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main() -> None:
    """Read the init frame, answer hello, serve until stdin closes."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        size, kind, _rid = HEADER.unpack(_read_exact(HEADER.size))
        if kind != K_INIT or size > MAX_FRAME:
            raise ValueError("expected an init frame")
        init = json.loads(_read_exact(size))
    except (EOFError, ValueError):
        os._exit(2)
    import importlib.util

    hello = {
        "version": VERSION,
        "python": list(sys.version_info[:3]),
        "magic": importlib.util.MAGIC_NUMBER.hex(),  # whose compiled code it can take (bytecode.py)
        "optimize": sys.flags.optimize,
        # Whether compiled code carries column tables (3.11+: not with -X no_debug_ranges).
        "ranges": not (os.environ.get("PYTHONNODEBUGRANGES") or "no_debug_ranges" in getattr(sys, "_xoptions", {})),
        "pid": os.getpid(),
    }
    if init.get("version") != VERSION or sys.version_info < (3, 8):
        hello["error"] = f"protocol {init.get('version')} / Python {sys.version.split()[0]} not supported"
        _write_all(1, _frame(K_HELLO, 0, json.dumps(hello).encode()))
        return
    try:
        executor = Executor(init["tmp"])
    except OSError as e:
        hello["error"] = f"cannot create the executor directory: {e}"
        _write_all(1, _frame(K_HELLO, 0, json.dumps(hello).encode()))
        return
    code = 0
    try:
        hello["dir"] = executor.dir
        executor.send_json(K_HELLO, 0, hello)
        # After the hello: the first run's request is on its way meanwhile (a round trip), not after it.
        for name in STDLIB:
            with contextlib.suppress(ImportError):
                __import__(name)
        executor.serve()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
    except ValueError:
        code = 2  # a frame the protocol does not allow: stop, the controller starts a new executor
    finally:
        executor.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
