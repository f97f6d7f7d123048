# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pool_info`` runs here, on the controller, where the pool daemon lives. It changes nothing
(its deprecated ``flush``/``stop`` options do what ``healer.pooled_ssh.pool`` does, with a warning)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict

from ansible.errors import AnsibleActionFail
from ansible_collections.healer.pooled_ssh.plugins.action.pool import (
    ControllerAction,
    client_for,
    flush,
    run_on_pool,
    stop,
)
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load

if TYPE_CHECKING:  # the module as mypy finds it; at run time under its one import name (bootstrap)
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client
else:
    _client = load("_client")
PoolClient = _client.PoolClient
PoolUnavailable = _client.PoolUnavailable

COLLECTION = "healer.pooled_ssh"
REMOVED_IN = "1.0.0"

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "pool_dir": {"type": "path"},
    "flush": {"type": "str"},
    "stop": {"type": "bool", "default": False},
}


def read(client: PoolClient) -> Dict[str, Any]:
    try:
        status = client.call({"op": "status"})
    except PoolUnavailable:
        return {"running": False, "stats": {"total": {}, "hosts": {}}, "transports": [], "changed": False}
    return {
        "running": True,
        "daemon": status["daemon"],
        "stats": status["stats"],
        "transports": status["transports"],
        "changed": False,
    }


def _legacy(change: Callable[[PoolClient], Dict[str, Any]]) -> Callable[[PoolClient], Dict[str, Any]]:
    """The deprecated options' result, as before: the pool as read before the change, and its outcome."""

    def step(client: PoolClient) -> Dict[str, Any]:
        out = read(client)
        done = change(client)
        out.update({k: v for k, v in done.items() if k not in ("transports", "running")})
        out["running"] = out["running"] and done["running"]
        return out

    return step


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def act(self, args: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        if args["flush"] and args["stop"]:
            raise AnsibleActionFail("flush and stop are both set: use healer.pooled_ssh.pool for each")
        step: Callable[[PoolClient], Dict[str, Any]] = read
        if args["flush"]:
            self._deprecated("flush", "healer.pooled_ssh.pool with state=flushed and host")
            host = None if args["flush"] == "all" else args["flush"]
            step = _legacy(lambda c: flush(c, host, check_mode))
        elif args["stop"]:
            self._deprecated("stop", "healer.pooled_ssh.pool with state=stopped")
            step = _legacy(lambda c: stop(c, check_mode))
        return run_on_pool(client_for(args["pool_dir"]), step)

    def _deprecated(self, option: str, instead: str) -> None:
        self._display.deprecated(
            f"pool_info's {option} option changes the pool, which an _info module must not: use {instead}",
            version=REMOVED_IN,
            collection_name=COLLECTION,
        )
