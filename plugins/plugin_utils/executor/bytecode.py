# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A payload's sources compiled once on the controller, for every host of the same bytecode.

Private to this collection. A host's executor compiles each source of a payload before its first
run (its template imports ``ansible.module_utils`` from source, and compiles the module's own
sources for its children): on a 2-core machine about 160 ms of the host's CPU for
``healer_diagnose``, for every host, every time an executor starts. The code is the same on every
host whose Python has the same bytecode magic, so the daemon compiles it once, with a controller
interpreter of that magic (:mod:`.compile_helper`, in a process of its own, so that compiling holds
no lock of the daemon's; the first run of that payload waits for it), and sends it beside the
payload. The host takes a code only for a source whose SHA-256 is the key it came under, and
compiles anything else itself, as before.

No controller interpreter of the host's magic (another Python minor version, say): nothing is
sent, and the host compiles as it always did.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

log = logging.getLogger("pooled_ssh.daemon")

#: The marshalled code the daemon keeps, all payloads and magics together; the oldest goes first.
MAX_CACHED_BYTES = 64 * 1024 * 1024
#: The largest code of one payload it sends (the executor's frames stop at 64 MiB); larger: the host compiles.
MAX_CODE_BYTES = 16 * 1024 * 1024
#: Payloads it remembers, compiled or not (a payload it could not compile is not tried again).
MAX_ENTRIES = 1024
#: The longest a compile may take before the host is left to compile itself (seconds).
COMPILE_TIMEOUT = 20.0
HELPER = (Path(__file__).parent / "compile_helper.py").read_text()
#: The helper's exit status when its interpreter's magic is not the host's.
OTHER_MAGIC = 3
#: Python versions and magics for which no interpreter was found here, remembered (then no more looking).
MAX_MISSING = 16

Key = Tuple[bytes, bytes, int]  # zip digest, magic, optimisation level


def candidates(version: Sequence[int]) -> List[str]:
    """Controller interpreters that may have the host's bytecode: the daemon's own when it is that
    version, then ``pythonX.Y`` on ``PATH`` and in the usual places. Each one's magic is still checked."""
    name = f"python{version[0]}.{version[1]}"
    found = [sys.executable] if tuple(sys.version_info[:2]) == tuple(version[:2]) else []
    found += [p for p in (shutil.which(name), f"/usr/bin/{name}", f"/usr/local/bin/{name}") if p]
    unique: List[str] = []
    for path in found:
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, unique):
            unique.append(path)
    return unique


class Compiler:
    """Compiles payloads for hosts by magic; one compile per payload, magic and level, kept a while."""

    def __init__(self, max_bytes: int = MAX_CACHED_BYTES) -> None:
        self.max_bytes = max_bytes
        #: What each payload gave, by key: its code, or b"" when it could not be compiled here.
        self._codes: collections.OrderedDict[Key, bytes] = collections.OrderedDict()
        self._size = 0
        #: Per host Python version (major, minor): the interpreter that compiles for it, and its magic.
        self._found: Dict[Tuple[int, int], Tuple[str, bytes]] = {}
        #: (major, minor, magic) with no interpreter here; bounded, so hosts naming ever other magics
        #: cannot have it look for interpreters without end.
        self._missing: Set[Tuple[int, int, bytes]] = set()
        self._lock = threading.Lock()
        self._compiling: Dict[Key, threading.Lock] = {}
        self.compiles = 0

    def codes(self, zip_text: bytes, digest: bytes, hello: Dict[str, object]) -> Optional[bytes]:
        """The host's magic and the marshalled codes of the payload (its base64 zip ``zip_text``, of
        SHA-256 ``digest``) for the host that said ``hello``; None when no interpreter here can."""
        try:
            magic = bytes.fromhex(str(hello["magic"]))
            optimize = int(hello["optimize"])  # type: ignore[call-overload]
            major, minor = (int(v) for v in hello["python"][:2])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None  # an executor of an older protocol: it compiles for itself
        # A host whose code carries no column tables (-X no_debug_ranges) gets none it would not make.
        if len(magic) != 4 or not 0 <= optimize <= 2 or major != 3 or not 0 <= minor < 100 or not hello.get("ranges"):
            return None
        key = (digest, magic, optimize)
        with self._lock:
            if key in self._codes:
                self._codes.move_to_end(key)
                return self._codes[key] or None
            found = self._found.get((major, minor))
            if found is not None and found[1] != magic:
                return None  # this version's interpreter here has another bytecode (a pre-release, say)
            if found is None and ((major, minor, magic) in self._missing or len(self._missing) >= MAX_MISSING):
                return None
            lock = self._compiling.setdefault(key, threading.Lock())
        with lock:  # the first host compiles; the others at once wait for it, then take its code
            with self._lock:
                if key in self._codes:
                    return self._codes[key] or None
            blob = self._compile(zip_text, magic, optimize, (major, minor))
            with self._lock:
                self._compiling.pop(key, None)
                if blob is not None or (major, minor) in self._found:  # else: no interpreter, remembered apart
                    self._keep(key, blob or b"")
        return blob

    def _keep(self, key: Key, blob: bytes) -> None:
        self._codes[key] = blob
        self._size += len(blob)
        while (self._size > self.max_bytes or len(self._codes) > MAX_ENTRIES) and self._codes:
            _key, old = self._codes.popitem(last=False)
            self._size -= len(old)

    def _compile(self, zip_text: bytes, magic: bytes, optimize: int, version: Tuple[int, int]) -> Optional[bytes]:
        try:
            stdin = magic + base64.b64decode(zip_text)
        except ValueError:
            return None
        known = self._found.get(version)
        other_magic_only = True
        for python in [known[0]] if known else candidates(version):
            blob, other_magic = self._run(python, optimize, stdin)
            if blob is not None and blob[:4] == magic and len(blob) <= MAX_CODE_BYTES:
                with self._lock:
                    self._found[version] = (python, magic)
                    self.compiles += 1
                return blob
            other_magic_only = other_magic_only and other_magic
        if not known and other_magic_only:
            log.debug("no interpreter on the controller has the bytecode of Python %d.%d: hosts compile", *version)
            with self._lock:
                self._missing.add((*version, magic))
        return None  # a timeout, a crash, a code too large: that payload, for that bytecode, compiles on hosts

    @staticmethod
    def _run(python: str, optimize: int, stdin: bytes) -> Tuple[Optional[bytes], bool]:
        """The helper's output, or None; and whether it said (or could only say) its magic is another."""
        try:
            done = subprocess.run(
                [python, "-I", "-S", *["-O"] * optimize, "-c", HELPER],
                input=stdin,
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
            )
        except OSError as e:
            log.debug("compiling with %s failed: %s", python, e)
            return None, True
        except subprocess.SubprocessError as e:
            log.debug("compiling with %s failed: %s", python, e)
            return None, False
        if done.returncode == 0:
            return done.stdout, False
        return None, done.returncode == OTHER_MAGIC


COMPILER = Compiler()
