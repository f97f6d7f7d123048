# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything healer_diagnose touches on the host, behind one object.

Checks never call ``open``, ``os``, ``subprocess`` or ``socket`` directly: they ask a
:class:`System`. Tests give it a fixture root (captured ``/proc`` and ``/sys`` trees) and
replace the clock, ``statvfs``, commands and the CPU count, so every check is testable with
plain data and without sleeping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple


class Skip(Exception):
    """Raised by a check that cannot run on this host (the message is the reason)."""


class CommandResult:
    """Exit code and output of a finished command."""

    __slots__ = ("rc", "stderr", "stdout")

    def __init__(self, rc: int, stdout: str, stderr: str) -> None:
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def _timex_type() -> Any:
    """``struct timex`` from <sys/timex.h>, built on first use: ctypes is only loaded by the time_sync check."""
    import ctypes

    class Timex(ctypes.Structure):
        """Natural alignment gives the kernel's layout."""

        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
            ("constant", ctypes.c_long),
            ("precision", ctypes.c_long),
            ("tolerance", ctypes.c_long),
            ("time_sec", ctypes.c_long),
            ("time_usec", ctypes.c_long),
            ("tick", ctypes.c_long),
            ("ppsfreq", ctypes.c_long),
            ("jitter", ctypes.c_long),
            ("shift", ctypes.c_int),
            ("stabil", ctypes.c_long),
            ("jitcnt", ctypes.c_long),
            ("calcnt", ctypes.c_long),
            ("errcnt", ctypes.c_long),
            ("stbcnt", ctypes.c_long),
            ("tai", ctypes.c_int),
            ("_padding", ctypes.c_int * 32),
        ]

    return Timex


STA_UNSYNC = 0x0040
STA_NANO = 0x2000
TIME_ERROR = 5


class System:
    """The host as seen from one root directory (``/`` in production, a fixture tree in tests)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    # -- files -----------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        """Absolute path of ``relative`` (written like ``proc/meminfo``) under the root."""
        return os.path.join(self.root, relative.lstrip("/"))

    def read_text(self, relative: str) -> str:
        with open(self.path(relative), encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def read_tail(self, path: str, max_bytes: int) -> str:
        """The last ``max_bytes`` of a (log) file, decoded leniently."""
        with open(self.path(path), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", errors="replace")

    def display(self, path: Any) -> str:
        """A path under the root shown as the host path it stands for (``/proc/...``)."""
        text = str(path)
        root = self.root.rstrip(os.sep)
        if root and text.startswith(root + os.sep):
            return text[len(root) :]
        return text

    def exists(self, relative: str) -> bool:
        return os.path.exists(self.path(relative))

    def listdir(self, relative: str) -> List[str]:
        return os.listdir(self.path(relative))

    def statvfs(self, mountpoint: str) -> Any:
        return os.statvfs(self.path(mountpoint))

    # -- processor and clocks --------------------------------------------------------------
    def cpu_count(self) -> int:
        """CPUs this process may run on (affinity, as ``nproc``), not all CPUs of the machine."""
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)

    def clock_ticks(self) -> int:
        try:
            return int(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError, AttributeError):
            return 100

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- commands --------------------------------------------------------------------------
    def has_systemd(self) -> bool:
        """systemd is the init system iff ``/run/systemd/system`` exists (sd_booted(3))."""
        return os.path.isdir(self.path("run/systemd/system"))

    def which(self, name: str) -> Optional[str]:
        return shutil.which(name)

    def run(self, argv: List[str], timeout: float) -> CommandResult:
        """Run a read-only command with a deadline; ``subprocess.TimeoutExpired`` propagates."""
        env = dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
        # AnsibleModule.run_command has no timeout, and a check's command must not outlive its deadline.
        proc = subprocess.run(  # pylint: disable=ansible-bad-function
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        return CommandResult(
            proc.returncode,
            proc.stdout.decode("utf-8", errors="replace"),
            proc.stderr.decode("utf-8", errors="replace"),
        )

    # -- kernel clock ----------------------------------------------------------------------
    def adjtimex(self) -> Optional[Dict[str, Any]]:
        """Read the kernel clock discipline state with ``adjtimex(modes=0)`` (read-only, no privilege)."""
        import ctypes
        import ctypes.util

        libc_name = ctypes.util.find_library("c")
        if not libc_name:
            return None
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            func = libc.adjtimex
        except (OSError, AttributeError):
            return None
        timex = _timex_type()()
        timex.modes = 0
        code = func(ctypes.byref(timex))
        if code < 0:
            return None
        scale = 1e-9 if timex.status & STA_NANO else 1e-6
        return {
            "code": int(code),
            "status": int(timex.status),
            "synced": not (timex.status & STA_UNSYNC) and code != TIME_ERROR,
            "offset_seconds": timex.offset * scale,
            "maxerror_seconds": timex.maxerror * 1e-6,
            "esterror_seconds": timex.esterror * 1e-6,
        }

    # -- network ---------------------------------------------------------------------------
    def connect(self, host: str, port: int, timeout: float) -> float:
        """Open and close a TCP connection; returns the seconds it took."""
        start = time.monotonic()
        with socket.create_connection((host, port), timeout=timeout):
            return time.monotonic() - start

    def resolve(self, name: str) -> List[str]:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})

    def http_get(
        self,
        url: str,
        method: str,
        headers: Dict[str, str],
        timeout: float,
        validate_certs: bool,
        max_body: int,
    ) -> Tuple[int, bytes, float]:
        """One request through ``urllib``: (status, first bytes of the body, seconds).

        HTTP error statuses are answers, not failures: they are returned like 2xx.
        """
        import ssl  # only the http check loads ssl and urllib
        import urllib.error
        import urllib.request

        context = ssl.create_default_context()
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(url, method=method, headers=headers)
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        start = time.monotonic()
        try:
            with opener.open(request, timeout=timeout) as response:
                body = response.read(max_body)
                return int(response.status), body, time.monotonic() - start
        except urllib.error.HTTPError as error:
            body = error.read(max_body) if error.fp is not None else b""
            return int(error.code), body, time.monotonic() - start

    def peer_certificate(self, host: str, port: int, timeout: float) -> bytes:
        """DER certificate the server presents (read without validating it, to report expiry)."""
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(
            raw, server_hostname=host
        ) as tls:
            return tls.getpeercert(binary_form=True) or b""
