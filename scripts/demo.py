"""The main job, end to end: diagnose a local fleet through pooled_ssh and show the pool at work.

Started by ``./run demo``. Starts N real sshd hosts on 127.0.0.2.. (the same harness the
integration tests use), runs ``scripts/demo-playbook.yml`` twice through
``healer.pooled_ssh.pooled_ssh`` (the second run reuses the warm pool), prints the fleet's
health and the pool's statistics, then stops the daemon and the hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import pool  # noqa: E402
from harness.ansible import AnsibleRunner, collections_root, stop_pool  # noqa: E402
from harness.sshd import Fleet, short_tempdir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=5, help="how many sshd hosts to start (default 5)")
    parser.add_argument("--keep", action="store_true", help="leave the work directory for inspection")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="healer-demo-"))
    pool_dir = short_tempdir("hp-")
    pool_dir.chmod(0o700)
    report_dir = work / "report"
    fleet = Fleet(work / "fleet", count=args.hosts)
    try:
        fleet.start()
        print(
            f"started {len(fleet.hosts)} sshd hosts: "
            + ", ".join(f"{h.name}={h.address}:{h.port}" for h in fleet.hosts),
            flush=True,
        )
        root = collections_root(work)
        runner = AnsibleRunner(work / "ansible", root, pool_dir, fleet.known_hosts)
        inventory = fleet.write_inventory(work / "inventory.yml")
        command = [
            runner.executable("ansible-playbook"),
            "-i",
            str(inventory),
            str(HERE / "demo-playbook.yml"),
            "-e",
            f"diagnose_report_dir={report_dir}",
        ]
        env = runner.env()
        rc = 0
        for label in ("cold pool", "warm pool"):
            print(f"\n=== ansible-playbook through pooled_ssh ({label})", flush=True)
            rc = subprocess.run(command, env=env, cwd=work, timeout=900, check=False).returncode or rc
        print("\n=== pool statistics (python -m ...plugin_utils._cli stats)", flush=True)
        print(pool.cli(root, pool_dir, "stats").stdout)
        handshakes = {h.name: h.accepted_count("publickey") for h in fleet.hosts}
        print(f"sshd 'Accepted publickey' lines per host over both runs: {json.dumps(handshakes)}")
        return rc
    finally:
        stop_pool(pool_dir)
        shutil.rmtree(pool_dir, ignore_errors=True)
        fleet.cleanup()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
