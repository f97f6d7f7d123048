"""benchmarks/bench.py runs end to end (issue 6): a tiny configuration, no timing asserted.

The benchmark's numbers are read by people from its output and docs/benchmarks.md; this test
only keeps the script working: it starts hosts and proxies, runs the playbooks through local
and pooled_ssh, counts the logins in the sshd logs and prints its table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOSTS = 2


def test_bench_quick_prints_the_table_with_one_login_per_host() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "SSH_POOL_"))}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench.py"),
            "--quick",
            "--hosts",
            str(HOSTS),
            "--connections",
            "local",
            "pooled-cold",
            "--no-doc",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    header = next((line for line in proc.stdout.splitlines() if line.startswith("| connection")), None)
    assert header is not None, proc.stdout
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "logins/run" in columns
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| connection"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = dict(zip(columns, cells, strict=False))
    pooled = rows.get("pooled_ssh cold")
    assert pooled is not None, proc.stdout
    assert pooled["logins/run"] == str(HOSTS), proc.stdout
    assert re.match(r"^\d+\.\d+$", pooled["median s"]), proc.stdout
    assert "local (floor)" in rows
    # CPU by side, from cgroups when this machine lets us make them (root): the hosts' side is where
    # pooled_ssh's modules run, and local runs none there. Without cgroups both columns say "-".
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpuacct import CpuGroups

    probe = CpuGroups("healer-probe-")
    can_account = probe.root is not None
    probe.close()
    if can_account:
        assert float(pooled["hosts CPU s"]) > 0 and float(pooled["ctl CPU s"]) > 0, proc.stdout
        assert float(rows["local (floor)"]["ctl CPU s"]) > float(rows["local (floor)"]["hosts CPU s"]), proc.stdout
        left = list(Path("/sys/fs/cgroup").glob("healer-*")) + list(Path("/sys/fs/cgroup").glob("*/healer-*"))
        assert not left, f"cgroups left behind: {left}"
    else:
        assert pooled["hosts CPU s"] == "-" and pooled["ctl CPU s"] == "-", proc.stdout
