"""A command whose start was never answered runs exactly once.

The fault: the link to sshd stays up for the client's bytes while the server's answers are
swallowed, then it is reset. The proxy (``FaultProxy.drop_replies_after``) triggers on the first
client read of at least ``TRIGGER`` bytes; each command here is padded (a shell comment, or an
environment variable the module command line carries) so that the SSH packet with its exec
request is the only client write that large. On a warm transport the pool has a spare session
channel open, so the exec request is the first thing the client sends for the command; without a
spare, or with a pty, the channel open and the pty request go by untouched (they are small) and
their replies arrive. For modules copied to the host (no pipelining), the trigger is held until
the module file sits in the remote temporary directory, so the file transfer before it (large
too) is not what gets caught.

The marker file proves that the exec request reached sshd and ran while its answer was being
dropped; the pool must then say "outcome unknown" for host:port and never run it again.

A pipelined module cannot run under this fault: sshd grants the channel's input window only
once the exec started, and that window adjustment is swallowed with the answer, so the module
never arrives. What runs is the command that would read it: here the interpreter is a wrapper
script on the host that appends the marker line, then starts Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import yaml
from harness.proxy import FaultProxy
from harness.sshd import wait_until
from test_reliability_faults import Background, lines, next_task_works, proxied_inventory, unreachable

TRIGGER = 4096
PAD = "p" * (2 * TRIGGER)

WARM = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: warm the transport (and its spare channel)
      ansible.builtin.raw: "true"
"""


def faulted_play(task: Dict[str, Any], host_vars: Dict[str, Any]) -> str:
    return yaml.safe_dump(
        [{"hosts": "fleet", "gather_facts": False, "vars": host_vars, "tasks": [dict(task, name="append once")]}],
        sort_keys=False,
    )


def module_file_in(directory: Path) -> Callable[[], bool]:
    """True once an AnsiballZ module file sits (under its final name) in ``directory``."""
    return lambda: any(directory.glob("*/AnsiballZ_*.py"))


CASES = {
    # name: (pipelining, pty, how the command is padded)
    "raw-no-pty": (True, False, "raw"),
    "module-copied-pty": (False, True, "module"),
    "module-copied-no-pty": (False, False, "module"),
    "module-pipelined": (True, False, "pipelined"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unanswered_exec_runs_once_and_reports_unknown_outcome(
    make_fleet, make_runner, tmp_path, pool_dir, shared_dir, case
):
    pipelining, pty, kind = CASES[case]
    fleet = make_fleet(count=1)
    marker = shared_dir / "marker"
    remote_tmp = shared_dir / "rtmp"
    # `tty` tells which way the command ran: "/dev/pts/N" with a pty, "not a tty" without.
    command = f'echo "run $(tty)" >> {marker}'
    host_vars: Dict[str, Any] = {"ansible_pooled_ssh_pty": pty, "ansible_remote_tmp": str(remote_tmp)}
    if kind == "raw":
        task: Dict[str, Any] = {"ansible.builtin.raw": f"{command} # {PAD}"}
    elif kind == "module":
        task = {"ansible.builtin.shell": command, "environment": {"POOLED_PAD": PAD}}
    else:
        task = {"ansible.builtin.shell": "true", "environment": {"POOLED_PAD": PAD}}
        wrapper = shared_dir / "python"
        wrapper.write_text(f'#!/bin/sh\n{command}\nexec {fleet.python} "$@"\n', encoding="utf-8")
        wrapper.chmod(0o755)
        host_vars["ansible_python_interpreter"] = str(wrapper)
    with FaultProxy((fleet.hosts[0].address, fleet.hosts[0].port)) as proxy:
        inventory = proxied_inventory(fleet, tmp_path / "inventory.yml", proxy)
        runner = make_runner(fleet, pipelining=pipelining)
        warm = runner.playbook(WARM, inventory, timeout=120)
        assert warm.rc == 0, warm.output_tail()
        when: Optional[Callable[[], bool]] = module_file_in(remote_tmp) if not pipelining else None
        fault = proxy.drop_replies_after(TRIGGER, when=when)
        run = Background(runner, faulted_play(task, host_vars), inventory)
        wait_until(fault.triggered.is_set, 90, interval=0.05, what="the exec request to go out")
        wait_until(lambda: lines(marker) == 1, 30, interval=0.05, what="the command to run on the host")
        proxy.reset_all()
        result = run.result()
        ran: List[str] = marker.read_text().splitlines()
        assert len(ran) == 1, (ran, result.output_tail())
        assert ran[0].startswith("run /dev/pts/" if pty else "run not a tty"), ran
        assert fault.caught >= TRIGGER and fault.dropped > 0, (fault.caught, fault.dropped)
        message = unreachable(result, "host1")
        assert f"{proxy.address}:{proxy.port}" in message, message
        assert "outcome is unknown" in message and "not re-run" in message, message
        assert result.recap()["host1"]["unreachable"] == 1, result.output_tail()
        next_task_works(runner, inventory)
    assert lines(marker) == 1
