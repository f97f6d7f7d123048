"""Pipelined modules through the remote executor, against real sshd, with ``remote_executor`` auto and off.

The same playbook runs both ways and must give the same results; ``-vvv`` says which path each
task took, and the daemon's status counts executor runs and payload cache hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
from harness import pool

MODULES = Path(__file__).resolve().parents[1] / "unit" / "plugins" / "plugin_utils" / "executor" / "modules"

PLAYBOOK = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
    - name: command
      ansible.builtin.command: "echo 'ÿ ↑ 汉字 ✓'"
    - name: before
      exec_pristine:
    - name: leak
      exec_leak:
    - name: after
      exec_pristine:
    - name: environment
      exec_pristine:
      environment:
        EXECUTOR_MARKER: "from the task"
    - name: crash
      exec_crash:
        how: stderr
      ignore_errors: true
    - name: killed
      exec_crash:
        how: kill
      ignore_errors: true
    - name: check mode
      ansible.builtin.command: "false"
      check_mode: true
    - name: async
      ansible.builtin.command: "echo async"
      async: 20
      poll: 1
"""


def _normalised(result: Dict[str, Any]) -> Dict[str, Any]:
    """A result without what differs between any two runs (timings, the payload's random directory)."""
    drop = {"start", "end", "delta", "_task", "_play", "invocation", "ansible_job_id", "results_file", "started",
            "finished", "env"}
    out = {k: v for k, v in result.items() if k not in drop}
    if "argv0" in out:
        out["argv0"] = out["argv0"].split("_payload.zip/", 1)[1]
    for key in ("module_stdout",):
        if key in out:
            out[key] = "\n".join(line for line in out[key].splitlines() if not line.startswith("{"))
    return out


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_modules_through_the_executor_match_the_plain_path(make_fleet, make_runner, tmp_path, pool_dir,
                                                           collections_root, mode):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet, extra_env={"ANSIBLE_LIBRARY": str(MODULES),
                                           "ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": mode})
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    run = runner.run_json(PLAYBOOK, inventory, "-vvv")
    host = fleet.hosts[0].name if hasattr(fleet, "hosts") else next(iter(fleet)).name
    failed = {r["_task"]: r.get("msg") for r in run.hosts.get(host, []) if r.get("failed")}
    assert run.rc == 0, (failed, run.result.stderr[-3000:])
    results = {name: run.task(host, name) for name in
               ("ping", "command", "before", "leak", "after", "environment", "crash", "killed", "check mode", "async")}
    assert results["ping"]["ping"] == "pong"
    assert results["command"]["stdout"] == "ÿ ↑ 汉字 ✓"
    assert _normalised(results["before"]) == _normalised(results["after"])
    assert results["after"]["leaked_global"] is False and results["after"]["leaked_env"] is None
    assert results["environment"]["marker"] == "from the task"
    assert results["crash"]["rc"] == 3 and "oops" in results["crash"]["module_stderr"]
    assert results["killed"]["rc"] == 137 and results["killed"]["failed"]
    assert results["async"]["stdout"] == "async"
    output = run.result.stdout
    used = output.count("EXECUTOR ran the module")
    counters = pool.status(collections_root, pool_dir)["daemon"]["executor"]
    if mode == "auto":
        # ping, command, 4 x pristine/leak, crash, killed, check mode; the async job itself is started
        # from a file the plain way, and its async_status polls are pipelined modules again.
        assert used >= 9, [line for line in output.splitlines() if "EXECUTOR" in line]
        assert counters["runs"] >= 9 and counters["started"] == 1 and counters["lost"] == 0
        assert counters["cache_hits"] >= 2  # the second and third exec_pristine: only the hash was sent
    else:
        # (The task's own EXECUTOR_MARKER variable shows in the command lines: look for the path lines.)
        assert "EXECUTOR ran the module" not in output and "EXECUTOR not used" not in output
        assert counters["runs"] == 0 and counters["started"] == 0
