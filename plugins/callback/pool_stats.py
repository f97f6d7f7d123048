# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: pool_stats
type: aggregate
short_description: Print the pooled_ssh pool's statistics for this playbook at its end
description:
  - At the end of a playbook, prints a table of what the C(healer.pooled_ssh.pooled_ssh) pool did during it,
    per inventory host and in total, hits, misses (handshakes), handshakes saved, transports, health checks
    passed and failed, and the time requests spent waiting for the pool.
  - The numbers are this playbook's share, the difference between the daemon's counters at the start and at the
    end, so they agree with the sshd logs (misses are authentications) even when the pool is shared.
  - Optionally writes the same data as JSON.
author: healer.pooled_ssh maintainers
version_added: 0.1.0
requirements:
  - enable in C(callbacks_enabled) (ansible.cfg) or C(ANSIBLE_CALLBACKS_ENABLED=healer.pooled_ssh.pool_stats)
options:
  pool_dir:
    description: The pool directory of the daemon to report on (the connection's O(pool_dir)).
    type: path
    default: ~/.ansible/pooled_ssh
    env:
      - name: ANSIBLE_POOLED_SSH_POOL_DIR
    ini:
      - section: pooled_ssh_connection
        key: pool_dir
  json_file:
    description: Also write the table's data as JSON to this file.
    type: path
    env:
      - name: ANSIBLE_POOLED_SSH_STATS_JSON
    ini:
      - section: callback_pool_stats
        key: json_file
"""

import json
import os

from ansible.plugins.callback import CallbackBase
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load

_client = load("_client")
PoolClient = _client.PoolClient
PoolFailure = _client.PoolFailure
PoolUnavailable = _client.PoolUnavailable
pool_dir_path = _client.pool_dir_path
_stats = load("_stats")
TABLE_COLUMNS = _stats.TABLE_COLUMNS
delta = _stats.delta
render_table = _stats.render_table


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "healer.pooled_ssh.pool_stats"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._before: dict = {}

    def _read(self) -> dict:
        client = PoolClient(pool_dir_path(self.get_option("pool_dir")), spawn=False)
        try:
            reply = client.call({"op": "stats"})
        except (PoolUnavailable, PoolFailure):
            return {"total": {}, "hosts": {}}
        finally:
            client.close()
        reply.pop("t", None)
        return reply

    def v2_playbook_on_start(self, playbook) -> None:
        self._before = self._read()

    def v2_playbook_on_stats(self, stats) -> None:
        data = delta(self._before, self._read())
        self._display.banner("POOLED SSH")
        for line in render_table(data, TABLE_COLUMNS).splitlines():
            self._display.display(line)
        path = self.get_option("json_file")
        if path:
            path = os.path.expanduser(path)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, path)
