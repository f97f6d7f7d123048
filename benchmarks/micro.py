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
from typing import Any, Callable, Dict, List, Tuple

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
    Warm: a forked child of a warm template, the payload sent by hash. Cold: a new executor's start
    and its first run, as a host's first module pays it, with its template compiling the payload's
    sources, and with the code compiled once on the controller (``executor/bytecode.py``; that one
    compile per payload is not counted).
    """
    import resource

    sys.path.insert(0, str(collections))
    sys.path.insert(0, str(REPO / "tests/unit/plugins/plugin_utils/executor"))
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import bytecode, manager, recognise
    from local_executor import Local, build  # type: ignore[import-not-found]

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    specs = {name: dict(spec, interpreter=python) for name, (_label, spec) in EXECUTOR_PAYLOADS.items()}
    built = build(base / "executor-payload", collections, specs)
    compiler = bytecode.Compiler()
    warm = Local(_fresh_dir(base, "warm"), python)
    cold_count = max(3, count // 4)
    rows = []
    for name, (label, _spec) in EXECUTOR_PAYLOADS.items():
        payload = built[name]
        before = children_cpu()
        fresh_ms = _median_ms(lambda payload=payload: _ok(warm.plain(payload)), count)
        fresh_cpu = (children_cpu() - before) / (count + 3) * 1000
        start_cpu = _tree_cpu(int(warm.hello["pid"]))  # type: ignore[call-overload]
        warm_ms = _median_ms(lambda payload=payload: _ok(warm.run(payload)), count)
        warm_cpu = (_tree_cpu(int(warm.hello["pid"])) - start_cpu) / (count + 3) * 1000  # type: ignore[call-overload]
        rows += [
            [f"{label}: fresh interpreter (`sh -c python3`, the plain pipelined run)", fresh_ms, fresh_cpu],
            [f"{label}: remote executor, warm (forked child of a warm template, payload by hash)", warm_ms, warm_cpu],
        ]
        parts = recognise.split_wrapper(payload)
        assert parts is not None
        compiler.codes(parts[1], manager.zip_hash(parts[1]), warm.hello)  # its one compile: not counted
        for how, given in (
            ("its template compiles the sources", None),
            ("code compiled on the controller", compiler.codes),
        ):
            times, cpus = [], []
            for _sample in range(cold_count):
                before = children_cpu()
                started = time.perf_counter()
                cold = Local(_fresh_dir(base, "cold"), python, compiler=given)
                _ok(cold.run(payload))
                times.append(time.perf_counter() - started)
                cold.stop()
                cpus.append(children_cpu() - before)
            rows.append(
                [
                    f"{label}: remote executor, cold (start + first run; {how})",
                    statistics.median(times) * 1000,
                    statistics.median(cpus) * 1000,
                ]
            )
    warm.stop()
    header = ["one pipelined module", "median ms", "host CPU ms/task"]
    cells = [[r[0], f"{r[1]:.1f}", f"{r[2]:.0f}"] for r in rows]
    widths = [max(len(header[i]), *(len(r[i]) for r in cells)) for i in range(3)]
    lines = [
        "| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |" for r in cells]
    return "\n".join(lines)


def _ok(result: Tuple[int, bytes, bytes]) -> None:
    assert result[0] == 0, result


def _fresh_dir(base: Path, name: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"executor-{name}-", dir=base))


if __name__ == "__main__" and sys.argv[1:2] == ["executor"]:
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from harness.ansible import collections_root  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as directory:
        root = collections_root(Path(directory) / "collections")
        print(executor_table(Path(directory), root, *(sys.argv[2:3] or ["/usr/bin/python3"])))
