"""Many inventory hosts on a few sshd, and commands under a soft descriptor limit (load runs, limit tests)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

#: Runs a command under a soft descriptor limit (the hard limit is left alone).
_UNDER_LIMIT = (
    "import os, resource, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(sys.argv[1]), hard), hard)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def under_nofile(soft: int, argv: Sequence[str]) -> List[str]:
    """``argv`` run with a soft RLIMIT_NOFILE of ``soft`` (what its children, the pool daemon too, inherit)."""
    return [sys.executable, "-c", _UNDER_LIMIT, str(soft), *argv]


def spread_inventory(path: Path, fleet, names: int) -> Path:
    """``names`` inventory hosts (h0000...) spread evenly over the fleet's sshd addresses: distinct pool keys."""
    lines = []
    for i in range(names):
        host = fleet.hosts[i % len(fleet.hosts)]
        lines.append(f"        h{i:04d}: {{ansible_host: {host.address}, ansible_port: {host.port}}}")
    path.write_text(
        "all:\n  vars:\n    ansible_connection: healer.pooled_ssh.pooled_ssh\n"
        f"    ansible_user: {fleet.user}\n    ansible_ssh_private_key_file: {fleet.client_key}\n"
        f"    ansible_python_interpreter: {fleet.python}\n"
        "  children:\n    fleet:\n      hosts:\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    return path
