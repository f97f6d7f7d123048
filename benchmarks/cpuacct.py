# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU time by side (controller, hosts) from cgroups, for the benchmark's "where the time goes".

On a 2-core machine the scenarios are CPU-bound, and the machine-wide figure from /proc/stat
mixes in whatever else runs. A cgroup per side counts exactly the processes of that side and
their descendants (Ansible's workers, the pool daemon and ssh masters they start; each sshd and
the shells and modules it starts), whatever else the machine does. Needs a writable cgroup v1
``cpuacct`` or cgroup v2 hierarchy (root on most machines); without one every figure is None.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import List, Optional, Sequence

#: (hierarchy root, usage file, its unit in seconds, the field to read or None for the whole file)
_HIERARCHIES = (
    (Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage", 1e-9, None),
    (Path("/sys/fs/cgroup"), "cpu.stat", 1e-6, "usage_usec"),
    (Path("/sys/fs/cgroup/unified"), "cpu.stat", 1e-6, "usage_usec"),
)


class CpuGroups:
    """Named cgroups under one private parent; every name is created on first use."""

    def __init__(self, prefix: str) -> None:
        self.root: Optional[Path] = None
        self.why_not = "no writable cgroup hierarchy (needs root)"
        for hierarchy, usage, unit, key in _HIERARCHIES:
            if not (hierarchy / "cgroup.procs").exists():
                continue
            if usage == "cpu.stat" and not (hierarchy / "cgroup.controllers").exists():
                continue  # not a cgroup v2 root
            parent = hierarchy / f"{prefix}{os.getpid()}"
            try:
                parent.mkdir()
            except OSError as e:
                self.why_not = f"cannot create a cgroup in {hierarchy}: {e.strerror}"
                continue
            self.root, self._usage, self._unit, self._key = parent, usage, unit, key
            break

    def _dir(self, name: str) -> Optional[Path]:
        if self.root is None:
            return None
        path = self.root / name
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        return path

    def wrap(self, name: str, argv: Sequence[str]) -> List[str]:
        """``argv`` run inside the cgroup from its first instruction (a shell joins, then execs)."""
        path = self._dir(name)
        if path is None:
            return list(argv)
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(path / "cgroup.procs"), *argv]

    def move(self, name: str, pid: int) -> None:
        """Put a running process in the cgroup; what it starts afterwards is counted there too."""
        path = self._dir(name)
        if path is not None:
            (path / "cgroup.procs").write_text(str(pid), encoding="ascii")

    def seconds(self, name: str) -> Optional[float]:
        """CPU seconds the cgroup's processes have used so far (those gone included)."""
        path = self._dir(name)
        if path is None:
            return None
        text = (path / self._usage).read_text(encoding="ascii")
        if self._key is None:
            return int(text) * self._unit
        for line in text.splitlines():
            key, _sep, value = line.partition(" ")
            if key == self._key:
                return int(value) * self._unit
        return None

    def close(self) -> None:
        """Hand any process left back to the parent hierarchy and remove the cgroups."""
        if self.root is None:
            return
        for child in sorted(self.root.iterdir()):
            if not child.is_dir():
                continue
            with contextlib.suppress(OSError):
                for pid in (child / "cgroup.procs").read_text(encoding="ascii").split():
                    (self.root.parent / "cgroup.procs").write_text(pid, encoding="ascii")
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            self.root.rmdir()
        self.root = None
