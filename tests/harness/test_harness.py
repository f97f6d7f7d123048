"""Tests of the harness itself: real sshd, real paramiko, real sockets, real ansible-playbook.

The harness is what every integration test stands on, so its fault injection must be shown to
do exactly what it claims (a stall is silent, a reset is a RST, a killed session is -1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import paramiko
import pytest

from harness.ansible import AnsibleRunner, Result, stop_pool
from harness.pool import PID_FILE
from harness.proxy import FaultProxy, Tarpit
from harness.sshd import Fleet, SshdHost, is_root, merge_config, needs_root, pid_alive, wait_until

# --------------------------------------------------------------------------- helpers


def connect(
    host: SshdHost, fleet: Fleet, *, address: Optional[str] = None, port: Optional[int] = None, **kwargs: object
) -> paramiko.SSHClient:
    """A paramiko client that checks the host key against the fleet's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    params: dict = {
        "username": host.user,
        "key_filename": str(fleet.client_key),
        "look_for_keys": False,
        "allow_agent": False,
        "timeout": 10,
        "banner_timeout": 10,
        "auth_timeout": 10,
    }
    params.update(kwargs)
    try:
        client.connect(address or host.address, port or host.port, **params)
    except BaseException:
        client.close()
        raise
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 10) -> Tuple[int, str]:
    """Run a command with a bound on every wait (paramiko has none of its own)."""
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        out = b""
        while True:
            data = chan.recv(65536)
            if not data:
                break
            out += data
        assert chan.status_event.wait(timeout), "no exit status"
        return chan.recv_exit_status(), out.decode()
    finally:
        chan.close()


def recv_exact(sock: socket.socket, n: int, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class EchoServer:
    """Threaded TCP echo server on loopback (one thread per connection, all joined on stop)."""

    def __init__(self, address: str = "127.0.0.1", sink: bool = False) -> None:
        self.sink = sink  # count and discard instead of echoing
        self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((address, 0))
        self.address = (address, self._listener.getsockname()[1])
        self._conns: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = conn.recv(262144)
                if not data:
                    break
                if self.sink:
                    with self._lock:
                        self.received += len(data)
                else:
                    conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._listener.close()
        self._accept_thread.join(10)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        for conn in self._conns:
            conn.close()
        assert not self._accept_thread.is_alive()
        assert not any(t.is_alive() for t in self._threads)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy_to_echo(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as proxy:
        yield proxy


def proxied_client(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.address, proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --------------------------------------------------------------------------- sshd


def test_merge_config_later_layers_win_and_match_goes_last() -> None:
    merged = merge_config(
        ["PasswordAuthentication no", "Subsystem sftp internal-sftp", "LogLevel VERBOSE"],
        ["passwordauthentication yes", "Match User x", "  MaxSessions 1", "MaxStartups 3"],
        ["Subsystem sftp /usr/lib/sftp-server"],
    )
    assert merged == [
        "passwordauthentication yes",
        "Subsystem sftp /usr/lib/sftp-server",
        "LogLevel VERBOSE",
        "Match User x",
        "MaxSessions 1",
        "MaxStartups 3",
    ]


@pytest.mark.integration
def test_fleet_hosts_accept_the_client_key(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=2)
    assert [h.address for h in fleet.hosts] == ["127.0.0.2", "127.0.0.3"]
    assert len({h.port for h in fleet.hosts}) == 2
    assert fleet.known_hosts.read_text().count("ssh-ed25519") == 2
    for host in fleet:
        assert host.host_key_line().startswith(f"[{host.address}]:{host.port} ssh-ed25519 AAAA")
        with contextlib.closing(connect(host, fleet)) as client:
            assert run(client, "echo ok") == (0, "ok\n")
            assert run(client, "id -un")[1].strip() == fleet.user
        host.wait_for_log(r"Accepted publickey for ")
        assert host.accepted_count() == 1
        assert host.accepted_count("publickey") == 1
        assert host.accepted_count("password") == 0


@pytest.mark.integration
def test_target_python_is_usable_by_the_test_user(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    with contextlib.closing(connect(fleet.hosts[0], fleet)) as client:
        rc, out = run(client, f"{fleet.python} -c 'import sys, json; print(sys.version_info[0])'")
    assert (rc, out.strip()) == (0, "3")


@pytest.mark.integration
def test_restart_keeps_the_port_and_the_log(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    port, pid = host.port, host.pid
    with contextlib.closing(connect(host, fleet)) as client:
        run(client, "true")
    host.restart()
    assert host.port == port and host.pid != pid
    with contextlib.closing(connect(host, fleet)) as client:
        assert run(client, "echo again")[1] == "again\n"
    host.wait_for_log(r"Accepted publickey", count=2)
    assert host.accepted_count() == 2


@pytest.mark.integration
def test_replaced_host_key_fails_the_host_key_check(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    old = host.host_key_line()
    new = host.replace_host_key()
    assert new != old and new.split()[0] == old.split()[0]
    with pytest.raises(paramiko.BadHostKeyException):
        connect(host, fleet)
    assert host.accepted_count() == 0
    fleet.write_known_hosts()
    with contextlib.closing(connect(host, fleet)) as client:
        assert run(client, "echo ok")[1] == "ok\n"


@pytest.mark.integration
def test_password_login(make_fleet: Callable[..., Fleet]) -> None:
    needs_root("password logins need a password set with chpasswd")
    fleet = make_fleet(count=1, password="Healer-pw-42")
    host = fleet.hosts[0]
    with contextlib.closing(
        connect(host, fleet, key_filename=None, password="Healer-pw-42")  # type: ignore[arg-type]
    ) as client:
        assert run(client, "echo ok")[1] == "ok\n"
    host.wait_for_log(r"Accepted password for ")
    assert host.accepted_count("password") == 1
    with pytest.raises(paramiko.AuthenticationException):
        connect(host, fleet, key_filename=None, password="wrong")  # type: ignore[arg-type]


@pytest.mark.integration
def test_encrypted_client_key(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1, encrypted_key_passphrase="s3cret phrase")
    assert fleet.encrypted_key is not None
    with pytest.raises(paramiko.PasswordRequiredException):
        paramiko.Ed25519Key.from_private_key_file(str(fleet.encrypted_key))
    with contextlib.closing(
        connect(fleet.hosts[0], fleet, key_filename=str(fleet.encrypted_key), passphrase="s3cret phrase")
    ) as client:
        assert run(client, "echo ok")[1] == "ok\n"


@pytest.mark.integration
def test_extra_config_and_set_config(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=2, extra_config=["MaxSessions 1"], per_host_config={"host2": ["MaxSessions 2"]})
    assert "MaxSessions 1" in fleet.host("host1").config_path.read_text()
    assert "MaxSessions 2" in fleet.host("host2").config_path.read_text()
    host = fleet.host("host1")
    with contextlib.closing(connect(host, fleet)) as client:
        transport = client.get_transport()
        assert transport is not None
        first = transport.open_session(timeout=10)
        with pytest.raises(paramiko.ChannelException):
            transport.open_session(timeout=10)
        first.close()
    host.set_config(["MaxSessions 3"])
    with contextlib.closing(connect(host, fleet)) as client:
        transport = client.get_transport()
        assert transport is not None
        chans = [transport.open_session(timeout=10) for _i in range(3)]
        for chan in chans:
            chan.close()


@pytest.mark.integration
def test_kill_sessions_makes_exit_status_unknown(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    with contextlib.closing(connect(host, fleet)) as client:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=10)
        chan.exec_command("echo started; sleep 60")
        chan.settimeout(10)
        assert chan.recv(100) == b"started\n"
        assert host.kill_sessions() == 1
        assert chan.status_event.wait(10), "channel not closed after its session was killed"
        assert chan.recv_exit_status() == -1
    assert host.running
    with contextlib.closing(connect(host, fleet)) as client:
        assert run(client, "echo ok")[1] == "ok\n"
    # The command outlives its killed session (as on a real server) until the host stops.
    leftovers = host.leftover_commands()
    assert leftovers
    host.stop()
    wait_until(lambda: not any(pid_alive(p) for p in leftovers), 10, what="leftover command exit")


@pytest.mark.integration
def test_kill_listener_leaves_sessions_running(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    client = connect(host, fleet)
    try:
        sessions = host.session_pids()
        assert len(sessions) == 1
        host.kill_listener()
        assert not host.running
        with pytest.raises(OSError):
            socket.create_connection((host.address, host.port), timeout=5).close()
        assert run(client, "echo still-here")[1] == "still-here\n"
        host.start()
        with contextlib.closing(connect(host, fleet)) as second:
            assert run(second, "echo new")[1] == "new\n"
    finally:
        client.close()
    host.stop()
    # stop() also reaps the session orphaned by kill_listener.
    wait_until(lambda: not any(pid_alive(p) for p in sessions), 10, what="orphaned session exit")


@pytest.mark.integration
def test_pause_makes_the_host_silent_until_resume(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    client = connect(host, fleet)
    try:
        host.pause()
        # TCP still completes (kernel backlog) but nothing answers.
        with socket.create_connection((host.address, host.port), timeout=5) as sock:
            sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                sock.recv(100)
            transport = client.get_transport()
            assert transport is not None and transport.is_active()
            host.resume()
            assert recv_exact(sock, 8) == b"SSH-2.0-"
        assert run(client, "echo back")[1] == "back\n"
    finally:
        client.close()


# --------------------------------------------------------------------------- ansible


def _ssh_inventory(fleet: Fleet, path: Path) -> Path:
    """Inventory for ansible.builtin.ssh (OpenSSH client): proves fleet + runner without the pool."""
    args = f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    return fleet.write_inventory(path, connection="ansible.builtin.ssh", group_vars={"ansible_ssh_common_args": args})


@pytest.mark.integration
def test_runner_playbook_json_and_recap(
    make_fleet: Callable[..., Fleet], make_runner: Callable[..., AnsibleRunner]
) -> None:
    if not os.access("/usr/bin/ssh", os.X_OK):
        pytest.skip("the OpenSSH client is needed for this harness check")
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = _ssh_inventory(fleet, runner.workdir / "inventory.yml")
    env = runner.env()
    assert env["ANSIBLE_POOLED_SSH_POOL_DIR"] == str(runner.pool_dir)
    assert env["ANSIBLE_COLLECTIONS_PATH"] == str(runner.collections_root)
    assert (runner.collections_root / "ansible_collections/healer/pooled_ssh/galaxy.yml").is_file()
    playbook = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
    - name: who
      ansible.builtin.command: id -un
    - name: fail on host2
      ansible.builtin.fail:
        msg: boom
      when: inventory_hostname == 'host2'
"""
    result = runner.run_json(playbook, inventory, timeout=300)
    assert result.rc == 2, result.result.output_tail()
    assert result.task("host1", "who")["stdout"] == fleet.user
    assert result.task("host1", "ping")["ping"] == "pong"
    assert result.task("host2", "fail on host2")["failed"] is True
    assert result.task("host1", "fail on host2")["skipped"] is True
    assert result.stats["host1"]["ok"] == 2 and result.stats["host2"]["failures"] == 1

    text = runner.playbook(playbook, inventory, timeout=300)
    recap = text.recap()
    assert recap["host1"] == {
        "ok": 2,
        "changed": 1,
        "unreachable": 0,
        "failed": 0,
        "skipped": 1,
        "rescued": 0,
        "ignored": 0,
    }
    assert recap["host2"]["failed"] == 1

    adhoc = runner.adhoc("host1", "ansible.builtin.command", "echo adhoc", inventory, timeout=300).assert_ok()
    assert "adhoc" in adhoc.stdout


def test_recap_parsing() -> None:
    out = """PLAY RECAP *********************************************************************
host1                      : ok=3    changed=1    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0
host2                      : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0

"""
    recap = Result(["x"], 4, out, "", 0.0).recap()
    assert recap["host1"]["ok"] == 3 and recap["host2"]["unreachable"] == 1


_FAKE_DAEMON = """
import os, signal, sys, time
pid_path = sys.argv[1]
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def bye(*_):
        os.unlink(pid_path)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
with open(pid_path + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()}\\n")
os.rename(pid_path + ".tmp", pid_path)
for _ in range(600):
    time.sleep(0.1)
"""


@pytest.mark.parametrize("mode", ["graceful", "ignore"])
def test_stop_pool_stops_the_daemon(tmp_path: Path, mode: str) -> None:
    assert stop_pool(tmp_path) is None  # no pid file: nothing to do
    pid_path = tmp_path / PID_FILE
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_DAEMON, str(pid_path), mode])
    try:
        wait_until(pid_path.exists, 10, what="fake daemon pid file")
        assert stop_pool(tmp_path, timeout=1.0 if mode == "ignore" else 10.0) == proc.pid
        assert proc.wait(10) == (0 if mode == "graceful" else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_stop_pool_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_path = tmp_path / PID_FILE
        pid_path.write_text(f"{proc.pid}\n")
        old = time.time() - 3600
        os.utime(pid_path, (old, old))  # the file predates the process: a stale pid
        assert stop_pool(tmp_path) is None
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- proxy


def test_proxy_forwards_and_counts(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as sock:
        sock.sendall(b"hello")
        assert recv_exact(sock, 5) == b"hello"
        assert proxy_to_echo.connections == 1
        # Counted after send() returns, possibly after the client already got the bytes.
        wait_until(lambda: proxy_to_echo.bytes_forwarded >= 10, 10, what="byte count")
    wait_until(lambda: proxy_to_echo.connections == 0, 10, what="connection closed")


def test_proxy_stall_holds_data_until_resume(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as sock:
        sock.sendall(b"a")
        assert recv_exact(sock, 1) == b"a"
        proxy_to_echo.stall()
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(10)
        assert proxy_to_echo.connections == 1  # still open: a silent peer
        proxy_to_echo.resume()
        assert recv_exact(sock, 4) == b"held"


def test_proxy_reset_all_sends_rst(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as sock:
        sock.sendall(b"x")
        assert recv_exact(sock, 1) == b"x"
        assert proxy_to_echo.reset_all() == 1
        sock.settimeout(10)
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    assert proxy_to_echo.connections == 0


def test_proxy_cut_closes_cleanly(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as sock:
        sock.sendall(b"x")
        assert recv_exact(sock, 1) == b"x"
        assert proxy_to_echo.cut() == 1
        sock.settimeout(10)
        assert sock.recv(10) == b""
    assert proxy_to_echo.connections == 0


def test_proxy_refuse_new(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as old:
        proxy_to_echo.refuse_new(True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy_to_echo.address, proxy_to_echo.port), timeout=5)
        old.sendall(b"still")
        assert recv_exact(old, 5) == b"still"
        proxy_to_echo.refuse_new(False)
        with proxied_client(proxy_to_echo) as new:
            new.sendall(b"new")
            assert recv_exact(new, 3) == b"new"


def test_proxy_latency_delays_round_trips_and_keeps_order(proxy_to_echo: FaultProxy) -> None:
    with proxied_client(proxy_to_echo) as sock:
        sock.sendall(b"warm")
        assert recv_exact(sock, 4) == b"warm"
        proxy_to_echo.set_latency(200)
        start = time.monotonic()
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
        assert time.monotonic() - start >= 0.18  # lower bound only: never flaky
        # Many small writes come back complete and in order.
        payload = b"".join(b"%06d" % i for i in range(5000))
        for i in range(0, len(payload), 600):
            sock.sendall(payload[i : i + 600])
        assert recv_exact(sock, len(payload), timeout=30) == payload
        proxy_to_echo.set_latency(0)
        sock.sendall(b"fast")
        assert recv_exact(sock, 4) == b"fast"


def test_proxy_handles_50_concurrent_connections(proxy_to_echo: FaultProxy) -> None:
    socks = [proxied_client(proxy_to_echo) for _i in range(50)]
    try:
        payloads = [os.urandom(64 * 1024) for _sock in socks]
        errors: List[BaseException] = []

        def exchange(sock: socket.socket, data: bytes) -> None:
            try:
                sender = threading.Thread(target=sock.sendall, args=(data,))
                sender.start()
                got = recv_exact(sock, len(data), timeout=30)
                sender.join(30)
                assert got == data
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=exchange, args=(s, p)) for s, p in zip(socks, payloads, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert not any(t.is_alive() for t in threads)
        assert proxy_to_echo.connections == 50
    finally:
        for s in socks:
            s.close()


def _transfer(address: Tuple[str, int], size: int) -> float:
    block = b"\0" * (1024 * 1024)
    start = time.monotonic()
    with socket.create_connection(address, timeout=30) as sock:
        for _block in range(size // len(block)):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the sink closes after reading everything
    return time.monotonic() - start


def test_proxy_is_not_the_bottleneck_for_100_mib() -> None:
    size = 100 * 1024 * 1024
    sink = EchoServer(sink=True)
    try:
        direct = _transfer(sink.address, size)
        with FaultProxy(sink.address) as proxy:
            proxied = _transfer((proxy.address, proxy.port), size)
            assert proxy.bytes_forwarded >= size
        mib_s = size / (1024 * 1024) / proxied
        print(f"100 MiB direct {direct:.2f}s, through proxy {proxied:.2f}s ({mib_s:.0f} MiB/s)")
        # Generous: paramiko's own SFTP throughput is far below this.
        assert mib_s > 50, f"proxy too slow: {mib_s:.0f} MiB/s (direct {size / 1048576 / direct:.0f} MiB/s)"
    finally:
        sink.stop()


@pytest.mark.integration
def test_proxy_in_front_of_sshd(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(count=1)
    host = fleet.hosts[0]
    with FaultProxy((host.address, host.port)) as proxy:
        # Paramiko looks the key up as [127.0.0.1]:<proxy port>: add that line.
        blob = host.host_key_line().split(" ", 1)[1]
        with fleet.known_hosts.open("a") as fh:
            fh.write(f"[{proxy.address}]:{proxy.port} {blob}\n")
        client = connect(host, fleet, address=proxy.address, port=proxy.port)
        try:
            assert run(client, "echo via-proxy")[1] == "via-proxy\n"
            transport = client.get_transport()
            assert transport is not None
            proxy.stall()
            with pytest.raises(paramiko.SSHException):
                transport.open_session(timeout=1)
            assert transport.is_active()  # paramiko does not notice a silent peer
            proxy.resume()
            assert run(client, "echo resumed")[1] == "resumed\n"
            proxy.reset_all()
            wait_until(lambda: not transport.is_active(), 10, what="transport to notice the reset")
        finally:
            client.close()


def test_tarpit_triggers_the_banner_timeout() -> None:
    with Tarpit() as tarpit:
        sock = socket.create_connection((tarpit.address, tarpit.port), timeout=5)
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = 0.5
            with pytest.raises(paramiko.SSHException, match="banner"):
                transport.start_client(timeout=5)
            assert tarpit.accepted == 1
        finally:
            transport.close()
            sock.close()


def test_is_root_matches_euid() -> None:
    assert is_root() == (os.geteuid() == 0)
