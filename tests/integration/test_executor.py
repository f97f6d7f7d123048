"""Pipelined modules through the remote executor, against real sshd, with ``remote_executor`` auto and off.

The same playbook runs both ways and must give the same results; ``-vvv`` says which path each
task took, and the daemon's status counts executor runs and payload cache hits.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict

import pytest
from harness import pool
from harness.sshd import DEFAULT_PASSWORD, set_password
from test_become import SECOND_PASSWORD, SECOND_USER, _password_rule, ensure_user, sudoers  # noqa: F401 - the fixture  # pylint: disable=unused-import

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
    drop = {
        "start",
        "end",
        "delta",
        "_task",
        "_play",
        "invocation",
        "ansible_job_id",
        "results_file",
        "started",
        "finished",
        "env",
    }
    out = {k: v for k, v in result.items() if k not in drop}
    if "argv0" in out:
        out["argv0"] = out["argv0"].split("_payload.zip/", 1)[1]
    for key in ("module_stdout",):
        if key in out:
            out[key] = "\n".join(line for line in out[key].splitlines() if not line.startswith("{"))
    return out


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_modules_through_the_executor_match_the_plain_path(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root, mode
):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet, extra_env={"ANSIBLE_LIBRARY": str(MODULES), "ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": mode})
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    run = runner.run_json(PLAYBOOK, inventory, "-vvv")
    host = fleet.hosts[0].name if hasattr(fleet, "hosts") else next(iter(fleet)).name
    failed = {r["_task"]: r.get("msg") for r in run.hosts.get(host, []) if r.get("failed")}
    assert run.rc == 0, (failed, run.result.stderr[-3000:])
    results = {
        name: run.task(host, name)
        for name in (
            "ping",
            "command",
            "before",
            "leak",
            "after",
            "environment",
            "crash",
            "killed",
            "check mode",
            "async",
        )
    }
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
        # The target's Python is this machine's: its payloads went with code compiled on the controller.
        assert counters["compiled_on_controller"] >= 1
    else:
        # (The task's own EXECUTOR_MARKER variable shows in the command lines: look for the path lines.)
        assert "EXECUTOR ran the module" not in output and "EXECUTOR not used" not in output
        assert counters["runs"] == 0 and counters["started"] == 0


BECOME_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: login user
      ansible.builtin.command: id -un
    - name: escalated
      ansible.builtin.command: id -un
      become: true
    - name: login user again
      ansible.builtin.command: id -un
"""


@pytest.mark.parametrize("method", ["sudo-password", "sudo-nopassword", "su"])
def test_become_goes_the_plain_way_beside_executor_runs(
    make_fleet,
    make_runner,
    sudoers,  # noqa: F811 - the fixture imported from test_become
    tmp_path,
    pool_dir,
    collections_root,
    method,
):
    """A task with become runs exactly as without the executor (the plain path escalates it, with its
    password prompt); the tasks around it still run through the executor, as the login user."""
    fleet = make_fleet(count=1)
    set_password(fleet.user, DEFAULT_PASSWORD)
    group_vars: Dict[str, Any] = {}
    expected = "root"
    if method == "sudo-password":
        sudoers(_password_rule(fleet.user))
        group_vars["ansible_become_password"] = DEFAULT_PASSWORD
    elif method == "sudo-nopassword":
        sudoers(f"{fleet.user} ALL=(ALL) NOPASSWD: ALL")
    else:
        ensure_user(SECOND_USER, SECOND_PASSWORD)
        group_vars.update(
            {
                "ansible_become_method": "su",
                "ansible_become_user": SECOND_USER,
                "ansible_become_password": SECOND_PASSWORD,
                "ansible_shell_allow_world_readable_temp": True,
            }
        )
        expected = SECOND_USER
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", group_vars=group_vars)
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "auto"})
    run = runner.run_json(BECOME_PLAY, inventory, "-vvv")
    assert run.rc == 0, run.result.output_tail()
    assert run.task("host1", "escalated")["stdout"] == expected
    assert run.task("host1", "login user")["stdout"] == run.task("host1", "login user again")["stdout"] == fleet.user
    output = run.result.stdout
    assert output.count("EXECUTOR ran the module") == 2, [ln for ln in output.splitlines() if "EXECUTOR" in ln]
    if method.startswith("sudo"):  # sudo pipelines: the executor was asked and declined; su copies the module
        assert "EXECUTOR not used: the task runs with become: the plain path escalates it" in output
    counters = pool.status(collections_root, pool_dir)["daemon"]["executor"]
    assert counters["runs"] == 2 and counters["started"] == 1


HANG_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: before
      ansible.builtin.ping:
    - name: hangs
      exec_crash:
        how: hang
        pidfile: "{pidfile}"
      vars:
        ansible_pooled_ssh_command_timeout: 3
      ignore_errors: true
    - name: next
      ansible.builtin.ping:
"""


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_command_timeout_kills_an_executor_run_and_the_next_task_is_fine(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    # Where the login user (not the test's) can write: the module says there which process it is.
    pidfile = Path(tempfile.gettempdir()) / f"healer-exec-hang-{uuid.uuid4().hex}.pid"
    runner = make_runner(
        fleet, extra_env={"ANSIBLE_LIBRARY": str(MODULES), "ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "auto"}
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    started = time.monotonic()
    try:
        run = runner.run_json(HANG_PLAY.format(pidfile=pidfile), inventory, "-vvv")
        print(
            f"a module that hangs, command_timeout 3 s, through the executor: the play took "
            f"{time.monotonic() - started:.1f} s"
        )  # measured only
        assert run.rc == 0, run.result.output_tail()
        hung = run.task(host.name, "hangs")
        assert hung["failed"]
        assert (
            f"{host.address}:{host.port}: command did not finish within 3s (command_timeout); the remote "
            "executor killed the module"
        ) in hung["msg"], hung["msg"]
        assert "Traceback" not in hung["msg"]
        assert run.task(host.name, "next")["ping"] == "pong"
        pid = int(pidfile.read_text())
        # The cancel reached the executor before the next task's run: the module was killed then.
        assert _process_gone(pid), f"the module {pid} still runs"
        counters = pool.status(collections_root, pool_dir)["daemon"]["executor"]
        assert (counters["timeouts"], counters["started"], counters["runs"]) == (1, 1, 2)  # runs: those that ended
        assert run.result.stdout.count("EXECUTOR ran the module") == 2  # before, next (hangs failed inside)
    finally:
        if pidfile.exists():
            if not _process_gone(int(pidfile.read_text())):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            pidfile.unlink()


MAX_SESSIONS_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: module
      ansible.builtin.ping:
    - name: copy
      ansible.builtin.copy:
        content: "held by the executor's session?\\n"
        dest: "{dest}"
    - name: raw
      ansible.builtin.raw: echo raw
    - name: module again
      ansible.builtin.command: cat {dest}
    - name: clean up
      ansible.builtin.file:
        path: "{dest}"
        state: absent
"""


def test_max_sessions_1_gives_the_executors_session_back(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    """With ``MaxSessions 1`` the executor holds the only session: the first other channel the server
    refuses closes the idle executor, opens again on the same transport, and later modules run plain."""
    fleet = make_fleet(count=1, extra_config=["MaxSessions 1"])
    dest = f"~/executor-max-sessions-{uuid.uuid4().hex}.txt"  # the login user's
    runner = make_runner(fleet, extra_env={"ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "auto"})
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    run = runner.run_json(MAX_SESSIONS_PLAY.format(dest=dest), inventory, "-vvv")
    assert run.rc == 0, run.result.output_tail()
    host = fleet.hosts[0].name
    assert run.task(host, "module")["ping"] == "pong"
    assert run.task(host, "copy")["changed"]
    assert run.task(host, "raw")["stdout"].strip() == "raw"
    assert run.task(host, "module again")["stdout"] == "held by the executor's session?"
    assert run.task(host, "clean up")["changed"]
    output = run.result.stdout
    assert "EXECUTOR not used: the executor could not take it (the server allows too few sessions" in output
    counters = pool.status(collections_root, pool_dir)["daemon"]["executor"]
    assert counters["started"] == 1 and counters["lost"] == 0
    assert fleet.hosts[0].accepted_count("publickey") == 1  # the transport was never given up


VERSIONED_MODULE = """#!/usr/bin/python
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.executor_version import UTILS_VERSION

MODULE_VERSION = {module}


def main() -> None:
    module = AnsibleModule(argument_spec={{}})
    module.exit_json(changed=False, module_version=MODULE_VERSION, utils_version=UTILS_VERSION)


if __name__ == "__main__":
    main()
"""

VERSION_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: version
      exec_version:
"""


def test_a_module_or_module_utils_changed_on_the_controller_never_runs_stale(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root
):
    """Between two playbooks on the same executor, the module changes, then one of its module_utils: each
    run reports the versions on the controller at that time (no stale zip, no template of other utils)."""
    fleet = make_fleet(count=1)
    library, utils = tmp_path / "library", tmp_path / "module_utils"
    library.mkdir()
    utils.mkdir()
    runner = make_runner(
        fleet,
        extra_env={
            "ANSIBLE_LIBRARY": str(library),
            "ANSIBLE_MODULE_UTILS": str(utils),
            "ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "auto",
        },
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    seen = []
    for module_version, utils_version in ((1, 1), (2, 1), (2, 2)):
        (library / "exec_version.py").write_text(VERSIONED_MODULE.format(module=module_version))
        (utils / "executor_version.py").write_text(f"UTILS_VERSION = {utils_version}\n")
        run = runner.run_json(VERSION_PLAY, inventory, "-vvv")
        assert run.rc == 0, run.result.output_tail()
        assert "EXECUTOR ran the module" in run.result.stdout
        result = run.task(fleet.hosts[0].name, "version")
        seen.append((result["module_version"], result["utils_version"]))
    assert seen == [(1, 1), (2, 1), (2, 2)]
    counters = pool.status(collections_root, pool_dir)["daemon"]["executor"]
    assert (counters["started"], counters["runs"], counters["lost"]) == (1, 3, 0)  # one executor served all three
