"""Servers and shells as real fleets have them: a shell that prints at login, ``MaxSessions 1``,
``PermitTTY no``. Each against a real sshd on loopback, through real ansible-playbook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
from harness import pool
from harness.sshd import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: private homes in mount namespaces")

NOISE = "Welcome to host1, have a nice day"
NOISY_RC = f"echo '{NOISE}'\n"
#: sshd's internal-sftp needs no shell; the sftp-server binary is started through the user's shell,
#: as on most systems' default config, so a noisy shell reaches the SFTP stream.
EXTERNAL_SFTP = "Subsystem sftp /usr/lib/openssh/sftp-server"
OPENSSH_WORDS = "Ensure the remote shell produces no output"


def _results(run: Any, host: str, prefix: str) -> List[Dict[str, Any]]:
    """Every result of the tasks called ``prefix…`` on ``host``, loop items included."""
    out = []
    for res in run.hosts[host]:
        if not str(res.get("_task", "")).startswith(prefix):
            continue
        out.extend(res.get("results") or [res])
    return out


def _ok_or_in_openssh_words(result: Dict[str, Any]) -> None:
    """A transfer either worked or failed with one line that says what OpenSSH says."""
    if not result.get("failed") and not result.get("unreachable"):
        return
    msg = str(result.get("msg", ""))
    assert OPENSSH_WORDS in msg, result
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg


def test_a_noisy_shell_never_locks_the_host_out(
    make_fleet, make_runner, tmp_path, pool_dir, collections_root, shared_dir
):
    fleet = make_fleet(count=1, shell_rc=NOISY_RC, extra_config=[EXTERNAL_SFTP])
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    source = tmp_path / "source.txt"
    source.write_text("payload\n", encoding="utf-8")
    play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: transfer copy
      ansible.builtin.copy: {{src: "{source}", dest: "{shared_dir}/copied-{{{{ item }}}}.txt", mode: "0644"}}
      loop: "{{{{ range(10) | list }}}}"
      ignore_errors: true
    - name: transfer fetch
      ansible.builtin.fetch: {{src: /etc/hostname, dest: "{tmp_path}/fetched-{{{{ item }}}}", flat: true}}
      loop: "{{{{ range(10) | list }}}}"
      ignore_errors: true
    - name: command afterwards
      ansible.builtin.command: echo still here
      register: after
"""
    run = make_runner(fleet, pipelining=True).run_json(play, inventory, timeout=600)
    transfers = _results(run, "host1", "transfer")
    assert len(transfers) == 20, run.result.output_tail()
    for result in transfers:
        _ok_or_in_openssh_words(result)
    copied = [r for r in _results(run, "host1", "transfer copy") if not r.get("failed")]
    for result in copied:
        assert Path(result["dest"]).read_text(encoding="utf-8") == "payload\n", "the noise is not in the file"
    fetched = sorted(tmp_path.glob("fetched-*"))
    for path in fetched:
        assert path.read_text(encoding="utf-8") == Path("/etc/hostname").read_text(encoding="utf-8")
    after = run.task("host1", "command afterwards")
    assert not after.get("failed") and not after.get("unreachable"), after
    assert after["stdout"].splitlines()[-1] == "still here"
    stats = pool.stats(collections_root, pool_dir)["hosts"]["host1"]
    assert stats["channelsInUse"] == 0, stats
    pool.cli(collections_root, pool_dir, "flush")
    assert pool.transports(collections_root, pool_dir) == []
    print(
        f"\nnoisy shell: {len(copied)}/10 copies and {len(fetched)}/10 fetches worked; "
        f"{fleet.hosts[0].accepted_count('publickey')} login(s)"
    )


@pytest.mark.parametrize("mode", ["pipelining", "no-pipelining", "executor"])
def test_max_sessions_1_logs_in_once_for_25_copies(make_fleet, make_runner, tmp_path, pool_dir, shared_dir, mode):
    """sshd refuses a second session, and holds a closed SFTP session's slot until its sftp-server
    exited: the pool must wait on its one transport (giving back the SFTP session, spare channel or
    executor it kept), never log in again because of a refusal."""
    fleet = make_fleet(count=1, extra_config=["MaxSessions 1"])
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    play = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: copies
      ansible.builtin.copy: {{content: "copy {{{{ item }}}}\\n", dest: "{shared_dir}/ms-{{{{ item }}}}.txt"}}
      loop: "{{{{ range(25) | list }}}}"
"""
    env = {"ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR": "auto"} if mode == "executor" else None
    run = make_runner(fleet, pipelining=mode != "no-pipelining", extra_env=env).playbook(play, inventory, timeout=600)
    daemon_log = (pool_dir / "daemon.log").read_text(encoding="utf-8", errors="replace")
    assert run.rc == 0, run.output_tail()
    for i in range(25):
        assert (shared_dir / f"ms-{i}.txt").read_text(encoding="utf-8") == f"copy {i}\n"
    # The server did refuse (else this proves nothing), and the pool kept its one login.
    assert "open FAILED" in daemon_log, daemon_log[-3000:]
    if mode == "executor":
        assert "remote executor started" in daemon_log, daemon_log[-3000:]
    host = fleet.hosts[0]
    assert host.accepted_count("publickey") == 1, f"{host.log_tail()}\n{daemon_log[-3000:]}"
    print(
        f"\nMaxSessions 1 ({mode}): 25/25 copies, {host.accepted_count('publickey')} login(s), "
        f"{daemon_log.count('open FAILED')} refused channel open(s)"
    )


def test_permit_tty_no_non_pipelined_tasks_and_raw_succeed(make_fleet, make_runner, tmp_path, pool_dir):
    """Without pipelining every command of a task may escalate, and the plugin asks for a pty for
    those (as the ssh plugin does); a server that refuses ptys must still run them."""
    fleet = make_fleet(count=1, extra_config=["PermitTTY no"])
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    play = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: module
      ansible.builtin.command: echo module ran
      register: module
    - name: raw
      ansible.builtin.raw: echo raw ran
      register: raw
    - ansible.builtin.assert:
        that: ["module.stdout == 'module ran'", "'raw ran' in raw.stdout"]
"""
    run = make_runner(fleet, pipelining=False).playbook(play, inventory, timeout=600)
    assert run.rc == 0, run.output_tail()
