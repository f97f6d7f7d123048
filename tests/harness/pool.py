"""Reading the pool daemon of a test's pool dir through the documented command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Union

CLI_MODULE = "ansible_collections.healer.pooled_ssh.plugins.plugin_utils._cli"
#: The daemon's pid file in its pool directory (``wire.frames.pid_name()``: one per protocol version).
PID_FILE = "daemon-v2.pid"


def cli(
    collections_root: Union[str, Path], pool_dir: Union[str, Path], *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the documented ``python -m …_cli`` command against ``pool_dir``."""
    env = dict(os.environ, PYTHONPATH=str(collections_root))
    proc = subprocess.run(
        [sys.executable, "-m", CLI_MODULE, "--pool-dir", str(pool_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pooled-ssh {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def stats(collections_root: Union[str, Path], pool_dir: Union[str, Path]) -> Dict[str, Any]:
    return json.loads(cli(collections_root, pool_dir, "stats", "--json").stdout)


def status(collections_root: Union[str, Path], pool_dir: Union[str, Path]) -> Dict[str, Any]:
    return json.loads(cli(collections_root, pool_dir, "status").stdout)


def transports(collections_root: Union[str, Path], pool_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    return status(collections_root, pool_dir)["transports"]


def daemon_pid(pool_dir: Union[str, Path]) -> int:
    return int((Path(pool_dir) / PID_FILE).read_text().split()[0])
