"""Issue 5: faults mid-play. Each test asserts the task's outcome, its message, and that the
pool serves the NEXT task.

Commands that must never be re-run append a line to a marker file on the host
(``echo run >> marker``): exactly one line proves they ran once. Tests wait for that
line (bounded polling) before injecting the fault, so the fault always lands mid-command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.frames import PROTOCOL_VERSION, socket_name
from harness import pool
from harness.ansible import AnsibleRunner, Result
from harness.proxy import FaultProxy
from harness.sshd import descendants_of, wait_until

PROTOCOL_SOCKET = socket_name()
#: A protocol this checkout does not speak.
OTHER_VERSION = PROTOCOL_VERSION + 1


# --------------------------------------------------------------------------- helpers


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def marked_command(marker: Path, seconds: int) -> str:
    return f"echo run >> {marker}; sleep {seconds}; echo done"


def play(command: str, hosts: str = "fleet") -> str:
    return f"""
- hosts: {hosts}
  gather_facts: false
  tasks:
    - name: marked
      ansible.builtin.shell: "{command}"
"""


NEXT = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: next
      ansible.builtin.command: echo next
"""


class Background:
    """runner.playbook(...) on a thread; ``result()`` joins it (bounded)."""

    def __init__(self, runner: AnsibleRunner, playbook: str, inventory: Path, **kwargs) -> None:
        self._box: List[object] = []

        def run() -> None:
            try:
                self._box.append(runner.playbook(playbook, inventory, timeout=120, **kwargs))
            except BaseException as exc:  # surfaced by result()
                self._box.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 150) -> Result:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "ansible-playbook did not finish"
        out = self._box[0]
        if isinstance(out, BaseException):
            raise out
        return out  # type: ignore[return-value]


def unreachable(result: Result, host: str) -> str:
    line = next((ln for ln in result.stdout.splitlines() if f"[{host}]: UNREACHABLE!" in ln), None)
    assert line is not None, result.output_tail()
    return json.loads(line.split("=>", 1)[1])["msg"]


def next_task_works(runner: AnsibleRunner, inventory: Path) -> Result:
    result = runner.playbook(NEXT, inventory, timeout=120)
    assert result.rc == 0, result.output_tail()
    assert all(r["ok"] == 1 for r in result.recap().values()), result.recap()
    return result


def proxied_inventory(fleet, path: Path, proxy: FaultProxy, name: str = "host1") -> Path:
    """An inventory whose host reaches sshd through ``proxy`` (known_hosts has the real address)."""
    host = fleet.hosts[0]
    known = fleet.known_hosts.read_text()
    fleet.known_hosts.write_text(
        known + host.host_key_line().replace(f"[{host.address}]:{host.port}", f"[{proxy.address}]:{proxy.port}") + "\n"
    )
    return fleet.write_inventory(
        path, hosts=[host], host_vars={name: {"ansible_host": proxy.address, "ansible_port": proxy.port}}
    )


# --------------------------------------------------------------------------- sshd faults


def test_sshd_restarted_mid_play_running_work_finishes(make_fleet, make_runner, tmp_path, pool_dir, shared_dir):
    """#8: the listener restarts while a command runs: the command finishes on its session, the
    next task reuses the transport, and a host connecting for the first time reaches the new listener."""
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    marker = shared_dir / "restart"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    late = tmp_path / "late.yml"
    late.write_text(
        f"fleet:\n  hosts:\n    late: {{ansible_host: {host.address}, ansible_port: {host.port}, "
        f"ansible_user: {fleet.user}, ansible_ssh_private_key_file: {fleet.client_key}, "
        f"ansible_python_interpreter: {fleet.python}}}\n"
    )
    runner = make_runner(fleet)
    playbook = play(marked_command(marker, 2), hosts="host1") + NEXT
    run = Background(runner, playbook, inventory)
    wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
    host.kill_listener()
    host.start()
    result = run.result()
    assert result.rc == 0, result.output_tail()
    assert result.recap()["host1"]["ok"] == 2
    assert lines(marker) == 1
    assert host.accepted_count("publickey") == 1  # the running transport survived the restart
    # A new name must log in to the new listener.
    after = runner.playbook(NEXT, inventory, "-i", str(late), timeout=120)
    assert after.rc == 0 and after.recap()["late"]["ok"] == 1, after.output_tail()
    assert host.accepted_count("publickey") == 2


def test_refused_connects_back_off_while_sshd_restarts(make_fleet, make_runner, tmp_path, pool_dir):
    """#8: a connect refused while the listener is down is retried briefly (jittered) and succeeds."""
    fleet = make_fleet(count=1)
    with FaultProxy((fleet.hosts[0].address, fleet.hosts[0].port)) as proxy:
        inventory = proxied_inventory(fleet, tmp_path / "inventory.yml", proxy)
        runner = make_runner(fleet)
        proxy.refuse_new(True)
        run = Background(runner, NEXT, inventory)
        log = Path(pool_dir) / "daemon.log"
        wait_until(
            lambda: log.exists() and "connection refused (attempt 1" in log.read_text(), 60, what="a refused connect"
        )
        proxy.refuse_new(False)
        result = run.result()
        assert result.rc == 0, result.output_tail()
        next_task_works(runner, inventory)
    assert fleet.hosts[0].accepted_count("publickey") == 1


def test_sshd_killed_mid_command_reports_unknown_outcome(
    make_fleet, make_runner, tmp_path, pool_dir, shared_dir, collections_root
):
    """#17: sshd (listener and sessions) killed while a command runs: UNREACHABLE, outcome unknown, not re-run."""
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    marker = shared_dir / "killed"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(fleet)
    run = Background(runner, play(marked_command(marker, 30)), inventory)
    wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
    host.stop()
    result = run.result()
    assert result.recap()["host1"]["unreachable"] == 1, result.output_tail()
    message = unreachable(result, "host1")
    assert f"{host.address}:{host.port}: the SSH connection was lost while the command ran" in message, message
    assert "outcome is unknown and it was not re-run" in message
    assert lines(marker) == 1
    host.start()
    next_task_works(runner, inventory)
    assert lines(marker) == 1
    assert pool.stats(collections_root, pool_dir)["total"]["channelsInUse"] == 0


def test_session_killed_after_exec_is_not_rerun(make_fleet, make_runner, tmp_path, pool_dir, shared_dir):
    """#7: the session's sshd process is killed after exec: UNREACHABLE "outcome unknown"; not re-run."""
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    marker = shared_dir / "session"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(fleet)
    run = Background(runner, play(marked_command(marker, 30)), inventory)
    wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
    assert host.kill_sessions() == 1
    result = run.result()
    message = unreachable(result, "host1")
    assert "was lost while the command ran" in message and "outcome is unknown" in message, message
    next_task_works(runner, inventory)
    assert lines(marker) == 1
    assert host.accepted_count("publickey") == 2


# --------------------------------------------------------------------------- silent links


def test_silent_link_is_detected_by_keepalives(make_fleet, make_runner, tmp_path, pool_dir, shared_dir):
    """#5: the link goes silent (half-open) mid-command: keepalives (1 s x 2) give up on it."""
    fleet = make_fleet(count=1)
    marker = shared_dir / "stall"
    with FaultProxy((fleet.hosts[0].address, fleet.hosts[0].port)) as proxy:
        inventory = proxied_inventory(fleet, tmp_path / "inventory.yml", proxy)
        runner = make_runner(
            fleet,
            extra_env={"ANSIBLE_POOLED_SSH_KEEPALIVE_INTERVAL": "1", "ANSIBLE_POOLED_SSH_KEEPALIVE_MAX_MISSED": "2"},
        )
        run = Background(runner, play(marked_command(marker, 60)), inventory)
        wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
        proxy.stall()
        result = run.result()
        message = unreachable(result, "host1")
        assert (
            f"{proxy.address}:{proxy.port}: the SSH connection was lost while the command ran (the server "
            "did not answer keepalives for 2s); its outcome is unknown and it was not re-run" in message
        ), message
        proxy.resume()
        next_task_works(runner, inventory)
    assert lines(marker) == 1
    assert fleet.hosts[0].accepted_count("publickey") == 2  # the silent transport was replaced


def test_silent_link_is_bounded_by_command_timeout(make_fleet, make_runner, tmp_path, pool_dir, shared_dir):
    """#5 without keepalives: command_timeout bounds the wait with its own message."""
    fleet = make_fleet(count=1)
    marker = shared_dir / "timeout"
    with FaultProxy((fleet.hosts[0].address, fleet.hosts[0].port)) as proxy:
        inventory = proxied_inventory(fleet, tmp_path / "inventory.yml", proxy)
        runner = make_runner(
            fleet, extra_env={"ANSIBLE_POOLED_SSH_KEEPALIVE_INTERVAL": "0", "ANSIBLE_POOLED_SSH_COMMAND_TIMEOUT": "3"}
        )
        run = Background(runner, play(marked_command(marker, 60)), inventory)
        wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
        proxy.stall()
        result = run.result()
        message = unreachable(result, "host1")
        assert "command did not finish within 3s (command_timeout); it may still be running on the host" in message
        proxy.resume()
        next_task_works(runner, inventory)
    assert lines(marker) == 1


# --------------------------------------------------------------------------- pool processes


def test_daemon_killed_mid_command_fails_clearly_and_is_not_rerun(
    make_fleet, make_runner, tmp_path, pool_dir, shared_dir
):
    """#17: SIGKILL of the pool daemon mid-command: the task fails at once, "outcome unknown"; not re-run."""
    fleet = make_fleet(count=1)
    marker = shared_dir / "daemon"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(fleet)
    run = Background(runner, play(marked_command(marker, 30)), inventory)
    wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
    first = pool.daemon_pid(pool_dir)
    os.kill(first, signal.SIGKILL)
    result = run.result()
    message = unreachable(result, "host1")
    assert "the pool daemon went away mid-request" in message and "outcome is unknown" in message, message
    assert lines(marker) == 1
    next_task_works(runner, inventory)
    assert pool.daemon_pid(pool_dir) != first
    assert lines(marker) == 1


def test_worker_killed_mid_command_returns_its_slot(
    make_fleet, make_runner, tmp_path, pool_dir, shared_dir, collections_root
):
    """#17: ansible-playbook and its workers SIGKILLed mid-task: the daemon closes the channel and
    frees the slot. With one transport allowed, a leaked slot would block the next task until pool_wait_timeout."""
    fleet = make_fleet(count=1, extra_config=["MaxSessions 1"])
    marker = shared_dir / "worker"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(
        fleet, extra_env={"ANSIBLE_POOLED_SSH_MAX_CONNECTIONS": "1", "ANSIBLE_POOLED_SSH_POOL_WAIT_TIMEOUT": "20"}
    )
    playbook = tmp_path / "worker.yml"
    playbook.write_text(play(marked_command(marker, 60)))
    with (tmp_path / "worker.out").open("wb") as out:
        proc = subprocess.Popen(
            [runner.executable("ansible-playbook"), "-i", str(inventory), str(playbook)],
            cwd=runner.workdir,
            env=runner.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(lambda: lines(marker) == 1, 60, what="the command to start")
            assert pool.stats(collections_root, pool_dir)["total"]["channelsInUse"] == 1
        finally:
            # ansible-core puts each worker in a session of its own: kill them with the parent's group.
            # The pool daemon is a child of the worker that started it (in its own session): spare it.
            daemon = pool.daemon_pid(pool_dir)
            for pid in [p for p in descendants_of(proc.pid) if p != daemon]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    wait_until(
        lambda: pool.stats(collections_root, pool_dir)["total"]["channelsInUse"] == 0,
        30,
        interval=0.2,
        what="the slot to be returned",
    )
    assert "worker went away mid-command" in (Path(pool_dir) / "daemon.log").read_text()
    next_task_works(runner, inventory)
    # sshd keeps a session's MaxSessions slot until its command exits (the orphaned `sleep` still
    # runs), so the old transport's next channel is refused: the pool drops that transport and
    # opens another, within max_connections 1.
    total = pool.stats(collections_root, pool_dir)["total"]
    assert total["channelsInUse"] == 0 and total["totalConnections"] == 1 and total["peakConnections"] == 1, total
    assert lines(marker) == 1


def test_stale_socket_and_twenty_workers_racing_start_one_daemon(make_fleet, make_runner, tmp_path, pool_dir):
    """#16: a socket left by a dead daemon, twenty forks racing: exactly one daemon starts."""
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(Path(pool_dir) / PROTOCOL_SOCKET))
    stale.close()  # the file stays; connecting to it is refused
    names = "\n".join(
        f"        n{i:02d}: {{ansible_host: {host.address}, ansible_port: {host.port}}}" for i in range(20)
    )
    inventory = tmp_path / "twenty.yml"
    inventory.write_text(
        f"all:\n  vars:\n    ansible_connection: healer.pooled_ssh.pooled_ssh\n"
        f"    ansible_user: {fleet.user}\n    ansible_ssh_private_key_file: {fleet.client_key}\n"
        f"    ansible_python_interpreter: {fleet.python}\n"
        f"  children:\n    fleet:\n      hosts:\n{names}\n"
    )
    runner = make_runner(fleet, extra_env={"ANSIBLE_FORKS": "20"})
    result = next_task_works(runner, inventory)
    assert len(result.recap()) == 20
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count(" started pid=") == 1, log
    assert pool.daemon_pid(pool_dir) > 0


class FakeDaemon:
    """Listens on the pool socket and answers every hello with ``reply`` (bytes), or never."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.path = path
        self.reply = reply
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.conns: List[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                continue
            self.conns.append(conn)
            conn.settimeout(5)
            try:
                conn.recv(65536)
                if self.reply:
                    conn.sendall(self.reply)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for conn in self.conns:
            conn.close()
        self.listener.close()
        self.path.unlink()


def test_a_process_of_another_version_on_the_socket_is_refused(make_fleet, make_runner, tmp_path, pool_dir):
    """A process on our socket name that speaks another protocol version: refused with a clear line,
    no hang; once it is gone the next task starts a real daemon. (Daemons of other versions use
    another socket name, pool-v<N>.sock, so a real older daemon never meets a newer worker.)"""
    import struct

    fleet = make_fleet(count=1)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    runner = make_runner(fleet)
    body = json.dumps({"t": "hello", "version": OTHER_VERSION, "pid": 1}).encode()
    fake = FakeDaemon(
        Path(pool_dir) / PROTOCOL_SOCKET, b"HPS" + bytes([OTHER_VERSION]) + struct.pack("!II", len(body), 0) + body
    )
    try:
        result = runner.playbook(NEXT, inventory, timeout=120)
    finally:
        fake.stop()
    message = unreachable(result, "host1")
    where = f"{pool_dir}/{PROTOCOL_SOCKET}"
    assert f"the process listening on {where} is not a pool daemon of protocol {PROTOCOL_VERSION}" in message
    assert f"protocol version {OTHER_VERSION} is not {PROTOCOL_VERSION}" in message, message
    assert "stop that process" in message, message
    next_task_works(runner, inventory)


def test_two_playbooks_share_one_daemon_concurrently(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=3)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    playbook = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: sleep 1
    - ansible.builtin.command: "echo {{ inventory_hostname }}"
    - ansible.builtin.command: sleep 1
"""
    runners = [make_runner(fleet), make_runner(fleet)]
    runs = [Background(r, playbook, inventory) for r in runners]
    results = [run.result() for run in runs]
    for result in results:
        assert result.rc == 0, result.output_tail()
        assert all(r["ok"] == 3 for r in result.recap().values())
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count(" started pid=") == 1, log
    stats: Dict[str, Dict[str, int]] = pool.stats(collections_root, pool_dir)["hosts"]
    for host in fleet:
        # Both playbooks used the same pool: 6 operations per host, on at most two transports.
        assert stats[host.name]["poolHits"] + stats[host.name]["poolMisses"] == 6, stats
        assert host.accepted_count("publickey") == stats[host.name]["poolMisses"] <= 2
    assert pool.stats(collections_root, pool_dir)["total"]["channelsInUse"] == 0
