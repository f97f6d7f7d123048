"""The daemon's modules without Paramiko: they import (as ansible-test's import test and ansible-doc
need), and the daemon exits at start with one line that says what to install."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN_UTILS = Path(__file__).resolve().parents[4] / "plugins" / "plugin_utils"
DAEMON_MODULES = sorted(
    f"{sub}.{p.stem}" for sub in ("daemon", "ssh") for p in (PLUGIN_UTILS / sub).glob("*.py") if p.stem != "__init__"
)

# A Python where ``import paramiko`` fails: None in sys.modules makes the import raise ImportError.
_PRELUDE = f"import sys; sys.modules['paramiko'] = None; sys.path.insert(0, {str(PLUGIN_UTILS)!r}); import bootstrap; "


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", _PRELUDE + code], capture_output=True, text=True, timeout=120, check=False
    )


def test_every_daemon_module_imports_without_paramiko() -> None:
    assert "daemon.server" in DAEMON_MODULES and "ssh.connect" in DAEMON_MODULES
    proc = _run(f"[bootstrap.load(m) for m in {DAEMON_MODULES!r}]; print('imported')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported"


def test_use_raises_the_kept_import_error() -> None:
    proc = _run("g = bootstrap.load('ssh.paramiko_guard'); g.paramiko.Transport")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the pooled_ssh daemon needs Paramiko on ")
    assert "(needed for paramiko.Transport)" in last


def test_daemon_exits_at_start_with_one_line() -> None:
    with tempfile.TemporaryDirectory(prefix="hg-") as pool:
        proc = _run(f"sys.exit(bootstrap.boot(['--dir', {pool!r}]))")
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"the pooled_ssh daemon needs Paramiko on {sys.executable}: pip install")
        assert list(Path(pool).iterdir()) == []  # it stopped before touching the pool directory
