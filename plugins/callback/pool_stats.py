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
  - Optionally writes the same data as JSON, and the daemon's counters as a Prometheus textfile for node_exporter's
    textfile collector (O(prometheus_file)), so that one scrape collects the pool with the diagnose role's C(healer_*)
    metrics.
author: healer.pooled_ssh maintainers (@healer)
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
  prometheus_file:
    description:
      - Also write the daemon's statistics, per inventory host, in the Prometheus text format to this file at the end
        of the playbook, for node_exporter's textfile collector (the name must end with C(.prom)).
      - The counters are the daemon's own (C(pooled_ssh_pool_misses_total), C(pooled_ssh_pool_hits_total), ...), not
        this playbook's share, so that Prometheus' C(rate) and C(increase) work across playbooks; they restart from 0
        with the daemon. The file is replaced atomically. Nothing is written when no daemon answers.
    type: path
    env:
      - name: ANSIBLE_POOLED_SSH_STATS_PROMETHEUS
    ini:
      - section: callback_pool_stats
        key: prometheus_file
"""

import json
import os
from typing import TYPE_CHECKING, Any

from ansible.plugins.callback import CallbackBase
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load

if TYPE_CHECKING:  # the modules as mypy finds them; at run time under their one import name (bootstrap)
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client, _stats
else:
    _client = load("_client")
    _stats = load("_stats")
PoolClient = _client.PoolClient
PoolFailure = _client.PoolFailure
PoolUnavailable = _client.PoolUnavailable
pool_dir_path = _client.pool_dir_path
TABLE_COLUMNS = _stats.TABLE_COLUMNS
delta = _stats.delta
prometheus = _stats.prometheus
render_table = _stats.render_table


def _replace(path: str, text: str) -> None:
    """Write ``path`` whole or not at all: a reader (node_exporter) never sees half a file.

    The temporary name starts with a dot, so the textfile collector (``*.prom``) skips it."""
    path = os.path.expanduser(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "healer.pooled_ssh.pool_stats"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._before: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        """The daemon's ``stats`` reply, or empty statistics with ``running`` false when none answers."""
        client = PoolClient(pool_dir_path(self.get_option("pool_dir")), spawn=False)
        try:
            reply = client.call({"op": "stats"})
        except (PoolUnavailable, PoolFailure):
            return {"total": {}, "hosts": {}, "running": False}
        finally:
            client.close()
        reply.pop("t", None)
        reply["running"] = True
        return reply

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._before = self._read()

    def v2_playbook_on_stats(self, stats: Any) -> None:
        after = self._read()
        data = delta(self._before, after)
        self._display.banner("POOLED SSH")
        for line in render_table(data, TABLE_COLUMNS).splitlines():
            self._display.display(line)
        path = self.get_option("json_file")
        if path:
            _replace(path, json.dumps(data, indent=2, sort_keys=True))
        textfile = self.get_option("prometheus_file")
        if textfile and after["running"]:
            _replace(textfile, prometheus(after))
