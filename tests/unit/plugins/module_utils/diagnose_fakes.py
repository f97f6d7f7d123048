"""Test doubles for healer_diagnose: a System rooted in a fixture tree with fake clock and tools."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import Context
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import check_options, check_thresholds
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import CommandResult, System

FIXTURES = Path(__file__).resolve().parent / "fixtures"

Command = Callable[[List[str]], CommandResult]


class FixtureSystem(System):
    """A host made of a fixture tree; the clock only moves when a check sleeps.

    ``proc/stat`` is the first CPU sample until ``sleep()`` is called and ``proc/stat.next``
    afterwards, so the cpu check sees exactly the two captured samples.
    """

    def __init__(
        self,
        tree: str,
        cpus: int = 4,
        now: float = 1700086400.0,
        commands: Optional[Dict[str, Command]] = None,
        binaries: Tuple[str, ...] = ("systemctl", "journalctl", "timedatectl"),
        adjtimex: Optional[Dict[str, Any]] = None,
        root: Optional[Path] = None,
    ) -> None:
        super().__init__(str(root if root is not None else FIXTURES / tree))
        self.cpus = cpus
        self.now = now
        self.clock = 5000.0
        self.sleeps: List[float] = []
        self.commands = commands or {}
        self.binaries = binaries
        self.calls: List[Tuple[List[str], float]] = []
        self._adjtimex = adjtimex
        self.connect_fn: Optional[Callable[[str, int, float], float]] = None
        self.resolve_fn: Optional[Callable[[str], List[str]]] = None
        self.http_fn: Optional[Callable[..., Tuple[int, bytes, float]]] = None
        self.cert_fn: Optional[Callable[[str, int, float], bytes]] = None

    def read_text(self, relative: str) -> str:
        relative = relative.lstrip("/")
        if relative == "proc/stat" and self.sleeps and Path(self.path("proc/stat.next")).exists():
            relative = "proc/stat.next"
        return super().read_text(relative)

    def listdir(self, relative: str) -> List[str]:
        return sorted(super().listdir(relative))

    def statvfs(self, mountpoint: str) -> Any:
        table = json.loads(Path(self.path("statvfs.json")).read_text())
        if mountpoint not in table:
            raise FileNotFoundError(2, "No such file or directory", mountpoint)
        return types.SimpleNamespace(**table[mountpoint])

    def cpu_count(self) -> int:
        return self.cpus

    def clock_ticks(self) -> int:
        return 100

    def monotonic(self) -> float:
        return self.clock

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock += seconds

    def which(self, name: str) -> Optional[str]:
        return "/usr/bin/" + name if name in self.binaries else None

    def run(self, argv: List[str], timeout: float) -> CommandResult:
        self.calls.append((list(argv), timeout))
        name = Path(argv[0]).name
        if name not in self.commands:
            raise AssertionError(f"unexpected command {argv}")
        return self.commands[name](argv)

    def adjtimex(self) -> Optional[Dict[str, Any]]:
        return self._adjtimex

    def connect(self, host: str, port: int, timeout: float) -> float:
        assert self.connect_fn is not None, "no fake connect"
        return self.connect_fn(host, port, timeout)

    def resolve(self, name: str) -> List[str]:
        assert self.resolve_fn is not None, "no fake resolver"
        return self.resolve_fn(name)

    def http_get(
        self, url: str, method: str, headers: Dict[str, str], timeout: float, validate_certs: bool, max_body: int
    ):
        assert self.http_fn is not None, "no fake http"
        return self.http_fn(url, method, headers, timeout, validate_certs, max_body)

    def peer_certificate(self, host: str, port: int, timeout: float) -> bytes:
        assert self.cert_fn is not None, "no fake certificate"
        return self.cert_fn(host, port, timeout)


def context(
    system: System,
    check: str,
    options: Any = None,
    thresholds: Optional[Dict[str, Any]] = None,
    timeout: float = 10.0,
    previous: Optional[Dict[str, Any]] = None,
    scope: str = "host",
) -> Context:
    """A check context built through the real option and threshold validation."""
    opts = check_options(check, options, "options." + check)
    opts["scope"] = scope
    limits = check_thresholds(check, [(thresholds, "thresholds." + check)])
    return Context(system, opts, limits, opts.pop("timeout", timeout), previous)


def command(stdout: str = "", rc: int = 0, stderr: str = "") -> Command:
    """A fake command that always answers the same."""
    return lambda argv: CommandResult(rc, stdout, stderr)


SYNCED = {"code": 0, "status": 0x2001, "synced": True, "offset_seconds": 0.0125, "maxerror_seconds": 0.2}
UNSYNCED = {"code": 5, "status": 0x40, "synced": False, "offset_seconds": 0.0, "maxerror_seconds": 16.0}
