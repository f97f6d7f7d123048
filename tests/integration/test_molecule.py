"""The role's molecule scenario (extensions/molecule/default), as users run it.

(ansible-lint on the whole collection, production profile, is a gate of ``./run lint``.)

``molecule test`` runs from extensions/ (the directory holding molecule/<scenario>/) with the
molecule of this interpreter's venv: create starts real sshd hosts on loopback, converge and
the idempotence run apply healer.pooled_ssh.diagnose through pooled_ssh, verify reads the
reports, destroy stops everything. Caches and the ephemeral directory go to the test's tmp dir,
so nothing is written into the checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Set

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIO = REPO_ROOT / "extensions" / "molecule" / "default"
BIN_DIR = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\x1b\]8;;[^\x1b]*\x1b\\")


def tool(name: str) -> str:
    path = BIN_DIR / name
    assert path.exists(), f"{name} is not installed in {BIN_DIR}: install the test extras (pip install -e '.[test]')"
    return str(path)


def clean_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    """The environment without the developer's ANSIBLE_*/MOLECULE_* settings, with caches in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_", "SSH_POOL_"))}
    env.update(
        PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-home" / "tmp"),
        NO_COLOR="1",
        ANSIBLE_NOCOLOR="1",
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        **extra,
    )
    return env


@contextlib.contextmanager
def no_cache_left_in_checkout() -> Iterator[None]:
    """Older molecule and ansible-lint releases create an (empty) .ansible/ cache in the project
    whatever the environment says: remove it when it was not there before."""
    cache = REPO_ROOT / ".ansible"
    existed = cache.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(cache, ignore_errors=True)


def orphaned_fleet_listeners() -> Set[int]:
    """sshd listeners of harness fleets (directories named hf-*) whose parent is not a Python process: the
    daemons fleet.py starts outlive it, while the test fixtures' fleets are children of pytest."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{entry}/status").read_text(), re.M).group(1))
            parent = Path(f"/proc/{ppid}/comm").read_text().strip() if ppid > 1 else ""
        except (OSError, AttributeError):
            continue
        if b"[listener]" in cmdline and b"/hf-" in cmdline and not parent.startswith("python"):
            found.add(int(entry))
    return found


def test_molecule_test_passes(tmp_path):
    ephemeral = tmp_path / "molecule"
    env = clean_env(tmp_path, MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral))
    before = orphaned_fleet_listeners()
    with no_cache_left_in_checkout():
        try:
            proc = subprocess.run(
                [tool("molecule"), "test"],
                cwd=SCENARIO.parent.parent,  # extensions/, which holds molecule/<scenario>/
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        finally:
            # Whatever happened, nothing create started may outlive the test (a no-op after destroy).
            subprocess.run(
                [sys.executable, str(SCENARIO / "fleet.py"), "stop", str(ephemeral)],
                capture_output=True,
                timeout=120,
                check=False,
            )
    output = ANSI.sub("", proc.stdout + proc.stderr)
    tail = "\n".join(output.splitlines()[-80:])
    assert proc.returncode == 0, f"molecule test failed ({proc.returncode}):\n{tail}"
    for step in ("create", "syntax", "converge", "idempotence", "verify", "destroy"):
        # molecule 26: "default > converge: Executed: Successful"; 25: "Running default > converge"
        ran = rf"default\s+\S+\s+{step}: Executed: Successful|Running default > {step}\b"
        assert re.search(ran, output), f"{step} did not run:\n{tail}"
    assert re.search(r"Idempotence completed successfully|idempotence: Executed: Successful", output), tail
    assert not (ephemeral / "fleet.json").exists(), "destroy left the fleet's state behind"
    assert orphaned_fleet_listeners() - before == set(), "destroy left sshd daemons running"
