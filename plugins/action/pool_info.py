# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pool_info`` runs here, on the controller, where the pool daemon lives."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load

_client = load("_client")
PoolClient = _client.PoolClient
PoolFailure = _client.PoolFailure
PoolUnavailable = _client.PoolUnavailable
pool_dir_path = _client.pool_dir_path

ARGUMENT_SPEC = {
    "pool_dir": {"type": "path"},
    "flush": {"type": "str"},
    "stop": {"type": "bool", "default": False},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        pool_dir = pool_dir_path(args["pool_dir"] or os.environ.get("ANSIBLE_POOLED_SSH_POOL_DIR"))
        client = PoolClient(pool_dir, spawn=False)
        try:
            result.update(self._run(client, args))
        except PoolUnavailable:
            result.update(running=False, stats={"total": {}, "hosts": {}}, transports=[], changed=False)
        except PoolFailure as e:
            raise AnsibleActionFail(f"pool daemon in {pool_dir}: {e}") from None
        finally:
            client.close()
        return result

    def _run(self, client: PoolClient, args: dict) -> dict:
        status = client.call({"op": "status"})
        out = {"running": True, "daemon": status["daemon"], "stats": status["stats"],
               "transports": status["transports"], "changed": False}
        flush = args["flush"]
        if flush:
            hosts = {t["host"] for t in status["transports"]}
            matching = [t for t in status["transports"] if flush == "all" or t["host"] == flush]
            out["changed"] = bool(matching)
            out["closed"] = len(matching)
            if not self._task.check_mode and matching:
                reply = client.call({"op": "evict", "host": None if flush == "all" else flush})
                out["closed"] = reply.get("closed", 0)
            if flush != "all" and flush not in hosts:
                out["msg"] = f"no pooled transport for {flush}"
        if args["stop"]:
            out["changed"] = True
            if not self._task.check_mode:
                client.call({"op": "stop"})
                out["running"] = False
        return out
