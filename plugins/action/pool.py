# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pool`` runs here, on the controller: it flushes transports or stops the pool daemon.

The functions below are also the deprecated ``flush``/``stop`` options of ``pool_info``.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load

# One import name for the controller code, so PoolFailure is the class the client raises.
if TYPE_CHECKING:  # the module as mypy finds it
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client
else:
    _client = load("_client")
PoolClient = _client.PoolClient
PoolFailure = _client.PoolFailure
PoolUnavailable = _client.PoolUnavailable
pool_dir_path = _client.pool_dir_path


class State(str, Enum):
    FLUSHED = "flushed"
    STOPPED = "stopped"


ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "pool_dir": {"type": "path"},
    "state": {"type": "str", "required": True, "choices": [s.value for s in State]},
    "host": {"type": "str"},
}


def client_for(pool_dir: Optional[str]) -> PoolClient:
    """A client that never starts a daemon: steering a pool that does not run changes nothing."""
    return PoolClient(pool_dir_path(pool_dir or os.environ.get("ANSIBLE_POOLED_SSH_POOL_DIR")), spawn=False)


def _plural(n: int) -> str:
    return f"{n} transport{'' if n == 1 else 's'}"


def flush(client: PoolClient, host: Optional[str], check_mode: bool) -> Dict[str, Any]:
    """Close the transports of ``host`` (None: all); in check mode only list them."""
    whose = f"of {host}" if host is not None else "in the pool"
    try:
        status = client.call({"op": "status"})
    except PoolUnavailable:
        return {
            "changed": False,
            "running": False,
            "closed": 0,
            "transports": [],
            "msg": f"no pool daemon runs: no transport {whose} to close",
        }
    matching = [t for t in status["transports"] if host is None or t["host"] == host]
    out: Dict[str, Any] = {"changed": bool(matching), "running": True, "closed": len(matching), "transports": matching}
    if check_mode or not matching:
        verb = "would close" if matching else "closed"
        out["msg"] = f"{verb} {_plural(len(matching))} {whose}"
        return out
    reply = client.call({"op": "evict", "host": host})
    out["closed"] = int(reply.get("closed", 0))
    out["msg"] = f"closed {_plural(out['closed'])} {whose}"
    return out


def stop(client: PoolClient, check_mode: bool) -> Dict[str, Any]:
    """Stop the daemon (it closes its transports); in check mode only say that it would."""
    try:
        status = client.call({"op": "status"})
    except PoolUnavailable:
        return {"changed": False, "running": False, "msg": "no pool daemon runs"}
    daemon = status["daemon"]
    if check_mode:
        return {"changed": True, "running": True, "daemon": daemon, "msg": f"would stop daemon pid {daemon['pid']}"}
    client.call({"op": "stop"})
    return {"changed": True, "running": False, "daemon": daemon, "msg": f"stopped daemon pid {daemon['pid']}"}


def run_on_pool(client: PoolClient, step: Callable[[PoolClient], Dict[str, Any]]) -> Dict[str, Any]:
    """Run ``step(client)``; one-line failures that name the pool directory."""
    try:
        return step(client)
    except (PoolFailure, PoolUnavailable) as e:
        raise AnsibleActionFail(f"pool daemon in {client.pool_dir}: {e}") from None
    finally:
        client.close()


class ControllerAction(ActionBase):
    """An action that runs on the controller only: no connection, no module sent anywhere."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {}

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        result: Dict[str, Any] = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        result.update(self.act(args, bool(self._task.check_mode)))
        return result

    def act(self, args: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        raise NotImplementedError


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def act(self, args: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        state = State(args["state"])
        if state is State.STOPPED and args["host"] is not None:
            raise AnsibleActionFail("host is for state=flushed; state=stopped stops the whole daemon")
        client = client_for(args["pool_dir"])
        if state is State.FLUSHED:
            return run_on_pool(client, lambda c: flush(c, args["host"], check_mode))
        return run_on_pool(client, lambda c: stop(c, check_mode))
