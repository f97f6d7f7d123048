"""Input a command does not read: deadlines and exit statuses still hold.

A pipelined module travels on the command's standard input. A module of several MiB is more
than sshd's channel window (2 MiB) and the pipes behind it hold, so when the remote command does
not read its input, the pool can forward only part of it. The pool must keep serving the
command meanwhile: its output, its deadline (``command_timeout``), the worker going away, and
its real exit status once it ends.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from test_reliability_faults import unreachable

BLOB_BYTES = 4 * 1024 * 1024  # random, so the module's zip does not shrink it

MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

BLOB = "{blob}"


def main():
    module = AnsibleModule(argument_spec={{}})
    module.exit_json(changed=False, size=len(BLOB))


if __name__ == "__main__":
    main()
"""

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: big module
      big_module: {}
"""


def big_module_library(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    blob = base64.b64encode(os.urandom(BLOB_BYTES * 3 // 4)).decode()
    (directory / "big_module.py").write_text(MODULE.format(blob=blob), encoding="utf-8")
    return directory


def test_command_that_stops_reading_stdin_ends_at_its_deadline(make_fleet, make_runner, tmp_path, pool_dir, shared_dir):
    """The interpreter is a script that sleeps and never reads the module. The task must end at
    command_timeout with the relay's deadline message, not when the sleep ends."""
    fleet = make_fleet(count=1)
    sleeper = shared_dir / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 40\n", encoding="utf-8")
    sleeper.chmod(0o755)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", host_vars={"host1": {"ansible_python_interpreter": str(sleeper)}}
    )
    runner = make_runner(
        fleet,
        extra_env={
            "ANSIBLE_LIBRARY": str(big_module_library(tmp_path / "library")),
            "ANSIBLE_POOLED_SSH_COMMAND_TIMEOUT": "3",
        },
    )
    started = time.monotonic()
    result = runner.playbook(PLAY, inventory, timeout=300)
    elapsed = time.monotonic() - started
    print(f"a command that stops reading stdin, command_timeout 3 s: the run took {elapsed:.1f} s")  # measured only
    message = unreachable(result, "host1")
    host = fleet.hosts[0]
    assert (
        f"{host.address}:{host.port}: command did not finish within 3s (command_timeout); it may still be "
        "running on the host" in message
    ), message


def test_large_pipelined_module_on_a_missing_interpreter_reports_rc_127(make_fleet, make_runner, tmp_path, pool_dir):
    """The shell cannot start the interpreter: it says "not found" and exits 127 without reading
    the module; that status and text are the task's, as with the ssh connection."""
    fleet = make_fleet(count=1)
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", host_vars={"host1": {"ansible_python_interpreter": "/nonexistent/python3"}}
    )
    runner = make_runner(fleet, extra_env={"ANSIBLE_LIBRARY": str(big_module_library(tmp_path / "library"))})
    run = runner.run_json(PLAY, inventory, timeout=300)
    task = run.task("host1", "big module")
    assert task.get("failed") and not task.get("unreachable"), json.dumps(task)[:2000]
    assert task.get("rc") == 127, json.dumps(task)[:2000]
    assert "/nonexistent/python3: not found" in task.get("module_stderr", ""), json.dumps(task)[:2000]
