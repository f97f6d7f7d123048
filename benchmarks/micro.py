# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One command through a warm pool against a fresh connection, at Python level, 0 ms RTT.

"The remote command itself" is ``true`` run on a transport already open in this process
(channel open, exec request, exit status: what any SSH client must pay); the pool's overhead
is what a worker pays on top of that to have the daemon do it (UNIX socket, framing, the
daemon's threads), with one client kept open and with a new client per command (as an
Ansible worker does once per task).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import paramiko

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn: Callable[[], None], count: int, warmup: int = 3) -> float:
    for _warm in range(warmup):
        fn()
    samples = []
    for _sample in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0


def _options(host: Any, key: Path, known_hosts: Path) -> Dict[str, Any]:
    return {
        "remote_addr": host.address,
        "port": host.port,
        "remote_user": host.user,
        "password": None,
        "private_key_file": str(key),
        "private_key_passphrase": None,
        "look_for_keys": False,
        "known_hosts_file": str(known_hosts),
        "proxy_command": None,
        "proxy_jump": None,
        "ssh_config_file": None,
        "host_key_checking": True,
        "host_key_auto_add": False,
        "record_host_keys": False,
        "timeout": 10,
        "banner_timeout": 30,
        "use_rsa_sha2_algorithms": True,
        "max_handshakes_per_address": 6,
        "max_auth_attempts": 3,
    }


def run(host: Any, key: Path, known_hosts: Path, base: Path, count: int = 200) -> str:
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _options as opts

    options = _options(host, key, known_hosts)
    spec = opts.connection_spec(options.get, host.name, environ={})
    message = {"cmd": "true", "pty": False}
    pool_dir = base / "micro-pool"
    pool_dir.mkdir(mode=0o700, exist_ok=True)

    def pooled(client: Any) -> None:
        for kind, data in client.exec_stream(message):
            if kind == "exit" and data != 0:
                raise RuntimeError(f"true exited {data}")

    def bound() -> Any:
        """A worker's client: the connection spec goes once per worker connection, in ``bind``."""
        fresh = _client.PoolClient(str(pool_dir), idle_exit=30.0)
        fresh.bind(spec, {})
        return fresh

    client = bound()
    rows: List[List[str]] = []
    try:
        start = time.perf_counter()
        pooled(client)
        first = (time.perf_counter() - start) * 1000.0
        warm = _median_ms(lambda: pooled(client), count)

        def new_client() -> None:
            fresh = bound()
            try:
                pooled(fresh)
            finally:
                fresh.close()

        warm_new = _median_ms(new_client, count // 2)
    finally:
        client.close()

    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(known_hosts))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(host.address, host.port, host.user, key_filename=str(key), look_for_keys=False, allow_agent=False)
    transport = ssh.get_transport()
    assert transport is not None
    # As the pool's transports: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms per command.
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def direct() -> None:
        chan = transport.open_session()
        chan.exec_command("true")
        chan.shutdown_write()
        chan.recv_exit_status()
        chan.close()

    try:
        itself = _median_ms(direct, count)
    finally:
        ssh.close()

    def fresh_connection() -> None:
        c = paramiko.SSHClient()
        c.load_host_keys(str(known_hosts))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(host.address, host.port, host.user, key_filename=str(key), look_for_keys=False, allow_agent=False)
        try:
            _stdin, stdout, _stderr = c.exec_command("true")
            stdout.channel.recv_exit_status()
        finally:
            c.close()

    fresh = _median_ms(fresh_connection, 20, warmup=1)

    ssh_base = [
        "ssh",
        "-i",
        str(key),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-p",
        str(host.port),
        f"{host.user}@{host.address}",
    ]
    openssh_fresh = _median_ms(
        lambda: subprocess.run([*ssh_base, "-o", "ControlMaster=no", "true"], check=True, capture_output=True),
        20,
        warmup=1,
    )
    control = base / "micro-cm"
    master = [*ssh_base[:-1], "-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=60s"]
    try:
        openssh_mux = _median_ms(
            lambda: subprocess.run([*master, ssh_base[-1], "true"], check=True, capture_output=True), 50
        )
    finally:
        subprocess.run([*master, "-O", "exit", ssh_base[-1]], capture_output=True, check=False)
        _client_stop(pool_dir)

    rows = [
        ["the remote command itself (exec on a transport open in this process)", f"{itself:.2f}", "-"],
        ["pooled_ssh, warm pool, one worker socket reused", f"{warm:.2f}", f"{warm - itself:+.2f}"],
        [
            "pooled_ssh, warm pool, new worker socket per command (as each task)",
            f"{warm_new:.2f}",
            f"{warm_new - itself:+.2f}",
        ],
        ["pooled_ssh, first command (daemon start + handshake)", f"{first:.1f}", f"{first - itself:+.1f}"],
        ["OpenSSH mux client through a ControlPersist master", f"{openssh_mux:.2f}", f"{openssh_mux - itself:+.2f}"],
        ["fresh paramiko connection (connect, auth, exec)", f"{fresh:.1f}", f"{fresh - itself:+.1f}"],
        [
            "fresh OpenSSH connection (ssh -o ControlMaster=no)",
            f"{openssh_fresh:.1f}",
            f"{openssh_fresh - itself:+.1f}",
        ],
    ]
    header = ["one `true`", "median ms", "overhead ms"]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    lines = [
        "| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


def _client_stop(pool_dir: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from harness.ansible import stop_pool

    stop_pool(pool_dir)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants (from /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_tree_cpu(int(child)) for child in children)


#: The payloads of the executor table: a module with no sources of its own beside ``module_utils``
#: (``command``), and one with a dozen (``healer_diagnose``, one cheap check).
EXECUTOR_PAYLOADS = {
    "command": ("`command: true`", {"module": "ansible.builtin.command", "args": {"_raw_params": "true"}}),
    "diagnose": (
        "`healer_diagnose` (memory check)",
        {"module": "healer.pooled_ssh.healer_diagnose", "args": {"checks": ["memory"], "metrics": False}},
    ),
}


def executor_table(base: Path, collections: Path, python: str = "/usr/bin/python3", count: int = 30) -> str:
    """Pipelined module payloads: through the remote executor vs a fresh interpreter.

    Both run on this machine on pipes (0 ms RTT, no SSH): what differs is the host's work per task.
    """
    import json
    import resource
    import select

    sys.path.insert(0, str(REPO / "plugins" / "plugin_utils"))
    out = base / "executor-payload"
    out.mkdir(parents=True, exist_ok=True)
    specs = {name: dict(spec, interpreter=python) for name, (_label, spec) in EXECUTOR_PAYLOADS.items()}
    builder = REPO / "tests/unit/plugins/plugin_utils/executor/build_payloads.py"
    subprocess.run(
        [sys.executable, str(builder), json.dumps(specs), str(out)],
        check=True,
        env=dict(os.environ, ANSIBLE_LOCAL_TEMP=str(base / "exec-local"), ANSIBLE_COLLECTIONS_PATH=str(collections)),
    )
    from executor import manager, recognise, source  # type: ignore[import-not-found]

    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        ["/bin/sh", "-c", source.bootstrap(python)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None

    class Pipes:
        def read(self, size: int, timeout: Optional[float]) -> bytes:
            poller = select.poll()
            poller.register(proc.stdout.fileno(), select.POLLIN)  # type: ignore[union-attr]
            if not poller.poll(None if timeout is None else int(timeout * 1000)):
                raise TimeoutError
            return os.read(proc.stdout.fileno(), size)  # type: ignore[union-attr]

        def ended(self) -> bool:
            return proc.poll() is not None

        def write(self, data: bytes) -> None:
            proc.stdin.write(data)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

        def close(self) -> None:
            proc.stdin.close()  # type: ignore[union-attr]

    executor = manager.Executor(Pipes(), tmp=str(base / "exec-remote-tmp"))
    hello = executor.start()
    rows = []
    for name, (label, _spec) in EXECUTOR_PAYLOADS.items():
        payload = (out / name).read_bytes()

        def fresh(payload: bytes = payload) -> None:
            subprocess.run(["/bin/sh", "-c", python], input=payload, capture_output=True, env=env, check=True)

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        fresh_ms = _median_ms(fresh, count)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        fresh_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (count + 3) * 1000
        parts = recognise.split_wrapper(payload)
        assert parts is not None

        def through(parts: Tuple[bytes, bytes, bytes] = parts) -> None:
            events = list(executor.run(*parts, {}))
            assert events[-1] == (manager.EventKind.EXIT, 0), events

        start_cpu = _tree_cpu(int(hello["pid"]))  # type: ignore[call-overload]
        executor_ms = _median_ms(through, count)
        executor_cpu = (_tree_cpu(int(hello["pid"])) - start_cpu) / (count + 3) * 1000  # type: ignore[call-overload]
        rows += [
            [
                f"{label}: fresh interpreter (`sh -c python3`, the plain pipelined run)",
                f"{fresh_ms:.1f}",
                f"{fresh_cpu:.0f}",
            ],
            [
                f"{label}: remote executor (forked child of a warm template, payload by hash)",
                f"{executor_ms:.1f}",
                f"{executor_cpu:.0f}",
            ],
        ]
    executor.close()
    proc.wait()
    header = ["one pipelined module", "median ms", "host CPU ms/task"]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    lines = [
        "| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["executor"]:
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from harness.ansible import collections_root  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as directory:
        root = collections_root(Path(directory) / "collections")
        print(executor_table(Path(directory), root, *(sys.argv[2:3] or ["/usr/bin/python3"])))
