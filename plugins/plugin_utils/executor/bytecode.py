# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A payload's sources compiled once on the controller, for every host of the same bytecode.

Private to this collection. A host's executor compiles each source of a payload before its first
run (its template imports ``ansible.module_utils`` from source, and compiles the module's own
sources for its children): on a 2-core machine about 160 ms of the host's CPU for
``healer_diagnose``, for every host, every time an executor starts. The code is the same on every
host whose Python has the same bytecode magic, so the daemon compiles it once, with a controller
interpreter of that magic (:mod:`.compile_helper`, in a process of its own: compiling holds no lock
of the daemon's), and sends it beside the payload. The host takes a code only for a source whose
SHA-256 is the key it came under, and compiles anything else itself, as before.

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
from typing import Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("pooled_ssh.daemon")

#: The marshalled code the daemon keeps, all payloads and magics together; the oldest goes first.
MAX_CACHED_BYTES = 64 * 1024 * 1024
#: The longest a compile may take before the host is left to compile itself (seconds).
COMPILE_TIMEOUT = 60.0
HELPER = (Path(__file__).parent / "compile_helper.py").read_text()

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
        self._codes: collections.OrderedDict[Key, bytes] = collections.OrderedDict()
        self._size = 0
        #: Per host Python version, the interpreter that compiles for it ("" once none was found).
        self._interpreters: Dict[Tuple[int, int, bytes], str] = {}
        self._lock = threading.Lock()
        self._compiling: Dict[Key, threading.Lock] = {}
        self.compiles = 0

    def codes(self, zip_text: bytes, digest: bytes, hello: Dict[str, object]) -> Optional[bytes]:
        """The host's magic and the marshalled codes of the payload (its base64 zip ``zip_text``, of
        SHA-256 ``digest``) for the host that said ``hello``; None when no interpreter here can."""
        try:
            magic = bytes.fromhex(str(hello["magic"]))
            optimize = int(hello["optimize"])  # type: ignore[call-overload]
            version = [int(v) for v in hello["python"]]  # type: ignore[attr-defined]
        except (KeyError, TypeError, ValueError):
            return None  # an executor of an older protocol: it compiles for itself
        if len(magic) != 4 or not 0 <= optimize <= 2 or len(version) < 2:
            return None
        key = (digest, magic, optimize)
        with self._lock:
            lock = self._compiling.setdefault(key, threading.Lock())
        with lock:  # the first host compiles; the others at once wait for it, then take its code
            with self._lock:
                if key in self._codes:
                    self._codes.move_to_end(key)
                    return self._codes[key]
            blob = self._compile(zip_text, magic, optimize, (version[0], version[1], magic))
            with self._lock:
                self._compiling.pop(key, None)
                if blob is not None:
                    self._keep(key, blob)
        return blob

    def _keep(self, key: Key, blob: bytes) -> None:
        self._codes[key] = blob
        self._size += len(blob)
        while self._size > self.max_bytes and self._codes:
            _key, old = self._codes.popitem(last=False)
            self._size -= len(old)

    def _compile(self, zip_text: bytes, magic: bytes, optimize: int, which: Tuple[int, int, bytes]) -> Optional[bytes]:
        known = self._interpreters.get(which)
        if known == "":
            return None
        try:
            stdin = magic + bytes([optimize]) + base64.b64decode(zip_text)
        except ValueError:
            return None
        for python in [known] if known else candidates(which[:2]):
            blob = self._run(python, stdin)
            if blob is not None and blob[:4] == magic:
                self._interpreters[which] = python
                self.compiles += 1
                return blob
        if known:
            return None  # that payload only: the interpreter stays the one for this version
        log.debug("no interpreter on the controller has the bytecode of Python %d.%d: hosts compile", *which[:2])
        self._interpreters[which] = ""
        return None

    @staticmethod
    def _run(python: str, stdin: bytes) -> Optional[bytes]:
        try:
            done = subprocess.run(
                [python, "-I", "-S", "-c", HELPER],
                input=stdin,
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("compiling with %s failed: %s", python, e)
            return None
        return done.stdout if done.returncode == 0 else None


COMPILER = Compiler()
