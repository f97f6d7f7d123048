# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pooled-ssh``: look at and steer the pool daemon from a terminal.

Run it as ``python -m ansible_collections.healer.pooled_ssh.plugins.plugin_utils._cli``
with the collections directory on ``PYTHONPATH``. Does not import Ansible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, List, Optional

from .bootstrap import load

# One import name (healer_pooled_ssh) whether run by pip's console script or with python -m.
if TYPE_CHECKING:  # the modules as mypy finds them
    from . import _client, _stats
else:
    _client = load("_client")
    _stats = load("_stats")
PoolClient, PoolFailure, PoolUnavailable, pool_dir_path = (
    _client.PoolClient,
    _client.PoolFailure,
    _client.PoolUnavailable,
    _client.pool_dir_path,
)
prometheus, render_table = _stats.prometheus, _stats.render_table


def _pool_dir(args: argparse.Namespace) -> str:
    return pool_dir_path(args.pool_dir or os.environ.get("ANSIBLE_POOLED_SSH_POOL_DIR"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pooled-ssh", description="Inspect and control the pooled_ssh daemon.")
    parser.add_argument(
        "--pool-dir", help="the pool directory (default: $ANSIBLE_POOLED_SSH_POOL_DIR or ~/.ansible/pooled_ssh)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the daemon and its live transports")
    stats = sub.add_parser("stats", help="pool statistics, overall and per host")
    fmt = stats.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--prometheus", action="store_true", help="print the Prometheus text exposition format")
    flush = sub.add_parser("flush", help="close pooled transports (all, or one host's)")
    flush.add_argument("host", nargs="?", help="inventory host name")
    sub.add_parser("stop", help="stop the daemon (it closes every transport)")
    args = parser.parse_args(argv)

    client = PoolClient(_pool_dir(args), spawn=False)
    try:
        if args.command == "stats":
            reply = client.call({"op": "stats"})
            reply.pop("t", None)
            if args.json:
                print(json.dumps(reply, indent=2, sort_keys=True))
            elif args.prometheus:
                print(prometheus(reply), end="")
            else:
                print(render_table(reply))
        elif args.command == "status":
            reply = client.call({"op": "status"})
            reply.pop("t", None)
            print(json.dumps(reply, indent=2, sort_keys=True))
        elif args.command == "flush":
            reply = client.call({"op": "evict", "host": args.host})
            print(f"closed {reply.get('closed', 0)} transport(s)")
        elif args.command == "stop":
            client.call({"op": "stop"})
            print("daemon stopping")
    except PoolUnavailable as e:
        print(f"pooled-ssh: {e}", file=sys.stderr)
        return 3
    except PoolFailure as e:
        print(f"pooled-ssh: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
