"""What idle pooled transports cost the daemon's process: CPU seconds per second, by reader wake-up.

    .venv/bin/python benchmarks/idle_transports.py [--transports 300] [--seconds 10]

Opens ``--transports`` authenticated Paramiko transports to one real OpenSSH sshd on loopback
(the test harness), leaves them idle, and reads this process's CPU time (user + system, from
``os.times``) over ``--seconds``: once with Paramiko's own transport class (its reader thread
wakes every 0.1 s) and once with the pool's (``ssh/exit_signal.transport_class``, every 1 s).
The figure scales with the number of transports: a pool daemon holding 1,000 idle transports
spends 1000/N times what is printed here. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List

import paramiko

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "plugins" / "plugin_utils" / "ssh"))

from exit_signal import IDLE_WAKEUP, transport_class  # noqa: E402
from harness.sshd import Fleet, short_tempdir  # noqa: E402


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(cls: type, host: object, key: paramiko.PKey, count: int, seconds: float) -> float:
    transports: List[paramiko.Transport] = []
    try:
        for _index in range(count):
            t = cls((host.address, host.port))  # type: ignore[attr-defined]
            t.start_client(timeout=30)
            t.auth_publickey(host.user, key)  # type: ignore[attr-defined]
            transports.append(t)
        time.sleep(1.0)  # the last handshakes' work is over
        before = cpu()
        time.sleep(seconds)
        return (cpu() - before) / seconds
    finally:
        for t in transports:
            t.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--transports", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    fleet = Fleet(short_tempdir("hi-"), count=1, extra_config=["MaxStartups 100:30:200"])
    try:
        fleet.start()
        host = next(iter(fleet))
        key = paramiko.Ed25519Key.from_private_key_file(str(fleet.client_key))
        plain = measure(paramiko.Transport, host, key, args.transports, args.seconds)
        pooled = measure(transport_class(paramiko.Transport), host, key, args.transports, args.seconds)
    finally:
        fleet.cleanup()
    print(f"{args.transports} idle transports, {args.seconds:g} s, this process's CPU per second of wall time:")
    print(f"  Paramiko's transport (reader wakes every 0.1 s): {plain:.3f} s/s")
    print(f"  the pool's transport (reader wakes every {IDLE_WAKEUP:g} s): {pooled:.3f} s/s")
    print(
        f"  per 1,000 idle transports: {plain * 1000 / args.transports:.2f} s/s -> "
        f"{pooled * 1000 / args.transports:.2f} s/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
