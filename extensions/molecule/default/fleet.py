"""Start and stop the molecule scenario's hosts: real sshd daemons on loopback.

    python fleet.py start STATE_DIR INVENTORY [--hosts N]
    python fleet.py stop STATE_DIR

``start`` starts N sshd hosts with the test harness (tests/harness/sshd.py: host1..hostN on
127.0.0.2.., each with its own host key, a shared client key and known_hosts), creates a short
private pool directory (UNIX socket paths are limited to 107 bytes), writes the inventory
(group ``fleet``, ``ansible_connection: healer.pooled_ssh.pooled_ssh``, the pool dir and
known_hosts as the connection's variables) and records what it started in STATE_DIR/fleet.json.
The daemons outlive this process; ``stop`` reads fleet.json, stops the pool daemon and every
sshd (with their session processes) and removes the directories. ``stop`` without a state file
does nothing, as molecule destroys before it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from harness.ansible import stop_pool  # noqa: E402
from harness.sshd import Fleet, HarnessError, descendants_of, pid_alive, short_tempdir, wait_until  # noqa: E402

STATE_FILE = "fleet.json"
STOP_TIMEOUT = 10.0


def start(state_dir: Path, inventory: Path, count: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_FILE).exists():
        stop(state_dir)  # a leftover of an interrupted run
    fleet = Fleet(None, count=count)
    pool_dir = short_tempdir("hp-")
    pool_dir.chmod(0o700)
    try:
        fleet.start()
        fleet.write_inventory(
            inventory,
            group_vars={
                "ansible_pooled_ssh_pool_dir": str(pool_dir),
                "ansible_pooled_ssh_known_hosts_file": str(fleet.known_hosts),
            },
        )
        state = {
            "fleet_dir": str(fleet.dir),
            "pool_dir": str(pool_dir),
            "inventory": str(inventory),
            "hosts": [
                {"name": h.name, "address": h.address, "port": h.port, "pid": h.pid, "config": str(h.config_path)}
                for h in fleet.hosts
            ],
        }
        (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        fleet.cleanup()
        shutil.rmtree(pool_dir, ignore_errors=True)
        raise
    for host in fleet.hosts:
        print(f"{host.name} {host.address}:{host.port} pid={host.pid}")


def _sshd_pids(config: str) -> List[int]:
    """The sshd processes started with this config file: the listener and its per-connection
    children (sshd rewrites its title to "sshd: /usr/sbin/sshd -D ... -f CONFIG [listener] ...",
    so the whole text is searched). A pid reused by another process is never picked."""
    needle = f" {config} ".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ") + b" "
        except OSError:
            continue
        if needle in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _terminate(pids: List[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        try:
            wait_until(lambda: not any(pid_alive(p) for p in pids), STOP_TIMEOUT, what="sshd exit")
            return
        except TimeoutError:
            continue
    raise HarnessError(f"processes did not exit: {[p for p in pids if pid_alive(p)]}")


def stop(state_dir: Path) -> None:
    path = state_dir / STATE_FILE
    if not path.exists():
        print("no fleet to stop")
        return
    state = json.loads(path.read_text(encoding="utf-8"))
    try:
        # The pool daemon first, so it closes its transports while the servers still run.
        stop_pool(state["pool_dir"])
        pids: List[int] = []
        for host in state["hosts"]:
            for pid in _sshd_pids(host["config"]):
                pids += [pid, *descendants_of(pid)]
        _terminate(list(dict.fromkeys(pids)))
        left = [pid for host in state["hosts"] for pid in _sshd_pids(host["config"])]
        if left:
            raise HarnessError(f"sshd processes still running after stop: {left}")
    finally:
        shutil.rmtree(state["pool_dir"], ignore_errors=True)
        shutil.rmtree(state["fleet_dir"], ignore_errors=True)
        path.unlink()
    print(f"stopped {len(state['hosts'])} hosts")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start the hosts and write the inventory")
    p_start.add_argument("state_dir", type=Path)
    p_start.add_argument("inventory", type=Path)
    p_start.add_argument("--hosts", type=int, default=5)
    p_stop = sub.add_parser("stop", help="stop what start started")
    p_stop.add_argument("state_dir", type=Path)
    args = parser.parse_args()
    if args.command == "start":
        start(args.state_dir, args.inventory, args.hosts)
    else:
        stop(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
