"""The daemon's smaller edges: a start that cannot write, a pid file per protocol version, the
keepalive's words when the transport simply died, and the worker's deadline against a wedged daemon.

Starts are real daemons, started the way workers start them (``PoolClient``/``spawn_daemon``), in
private 0700 directories; the wedged daemon is a real one stopped with SIGSTOP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.maintenance import Maintainer
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import ErrorKind, PoolFailure, PoolUnavailable
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.transport import PooledTransport
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames
from daemon_fakes import wait_for
from fake_ssh import FakeServer
from harness.pool import PID_FILE
from test_daemon_hostile_clients import RealDaemon

SPEC = {"host": "web1", "addr": "127.0.0.9", "port": 2222, "user": "deploy", "timeout": 1}


@pytest.fixture
def pool_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="he-")
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- a start that cannot write ------------------------------------------------------------------


def test_a_daemon_that_cannot_write_its_log_says_so_in_one_line(pool_dir: str) -> None:
    os.mkdir(os.path.join(pool_dir, "daemon.log"))  # EISDIR: what a full or read-only disk does to the log's open
    client = _client.PoolClient(pool_dir)
    with pytest.raises(PoolUnavailable) as e:
        client.open()
    text = str(e.value)
    assert text.startswith(
        "the pool daemon exited with status 2 at start: pooled_ssh daemon: cannot write its log "
        f"{pool_dir}/daemon.log (Is a directory): free space"
    ), text
    assert "Traceback" not in text and "\n" not in text
    assert not os.path.exists(os.path.join(pool_dir, frames.socket_name()))


def test_a_daemon_that_cannot_write_its_pid_file_leaves_no_socket_behind(pool_dir: str) -> None:
    os.mkdir(os.path.join(pool_dir, frames.pid_name()))
    client = _client.PoolClient(pool_dir)
    with pytest.raises(PoolUnavailable) as e:
        client.open()
    text = str(e.value)
    assert "exited with status 2 at start" in text and "cannot publish the pool socket" in text, text
    assert "(Is a directory)" in text and "Traceback" not in text
    # No socket a later worker would find and nobody serves; no temporary one either.
    assert sorted(os.listdir(pool_dir)) == sorted(
        ["daemon.log", "daemon.stderr", frames.pid_name(), "spawn.lock", f"daemon-v{frames.PROTOCOL_VERSION}.lock"]
    )
    # Once the disk is fine again, the next worker starts a daemon.
    os.rmdir(os.path.join(pool_dir, frames.pid_name()))
    try:
        assert client.call({"op": "ping"}) == {"t": "pong"}
    finally:
        client.call({"op": "stop"})
        client.close()


# -- a pid file per protocol version ------------------------------------------------------------


def test_each_protocol_version_has_its_own_pid_file() -> None:
    assert frames.pid_name() == PID_FILE == f"daemon-v{frames.PROTOCOL_VERSION}.pid"
    assert frames.pid_name(frames.PROTOCOL_VERSION + 1) != frames.pid_name()


def test_a_daemon_of_another_version_in_the_same_directory_does_not_keep_ours_from_cleaning_up() -> None:
    daemon = RealDaemon()
    other = Path(daemon.dir) / frames.pid_name(frames.PROTOCOL_VERSION + 1)
    try:
        assert (Path(daemon.dir) / frames.pid_name()).read_text().split() == [str(daemon.pid)]
        other.write_text("999999\n")  # another version's daemon starts next to ours
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
        assert not os.path.exists(daemon.path) and not (Path(daemon.dir) / frames.pid_name()).exists()
        assert other.read_text() == "999999\n"  # and its file is its own
    finally:
        daemon.stop()


# -- keepalive wording --------------------------------------------------------------------------


class _Pool:
    def __init__(self) -> None:
        self.dead: List[Any] = []

    def mark_dead(self, entry: Any) -> None:
        self.dead.append(entry)


def _keepalive(pt: PooledTransport, timeout: float) -> _Pool:
    pool = _Pool()
    entry = SimpleNamespace(conn=pt, key=SimpleNamespace(label="deploy@web1:22"))
    Maintainer(SimpleNamespace(pool=pool))._keepalive(entry, timeout)  # type: ignore[arg-type]
    return pool


def test_a_transport_that_died_is_not_said_to_have_missed_keepalives() -> None:
    server = FakeServer()
    transport = server.transport()
    pt = PooledTransport(transport, "deploy@web1:22")  # type: ignore[arg-type]
    transport.die()
    pool = _keepalive(pt, 30)
    assert pool.dead and pt.lost_reason is None and pt.lost_suffix() == ""
    transport.release_fds()


def test_a_silent_transport_is_said_to_have_missed_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    transport = server.transport()
    release = threading.Event()
    monkeypatch.setattr(transport, "global_request", lambda *a, **k: release.wait(30))
    pt = PooledTransport(transport, "deploy@web1:22")  # type: ignore[arg-type]
    try:
        pool = _keepalive(pt, 0.2)
    finally:
        release.set()
    assert pool.dead and pt.lost_reason == "the server did not answer keepalives for 0.2s"
    transport.release_fds()


# -- the worker's deadline against a wedged daemon ------------------------------------------------


def test_a_stopped_daemon_is_reported_within_the_workers_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = RealDaemon()
    client = _client.PoolClient(daemon.dir, spawn=False)
    try:
        assert client.call({"op": "ping"}) == {"t": "pong"}
        monkeypatch.setattr(_client, "PROMPT_REPLY", 0.5)
        os.kill(daemon.pid, signal.SIGSTOP)
        wait_for(lambda: _state(daemon.pid) == "T", "the daemon to be stopped")  # the signal is delivered
        with pytest.raises(PoolFailure) as e:
            client.call({"op": "stats"})
        assert e.value.kind is ErrorKind.DAEMON_LOST, str(e.value)
        assert str(e.value).startswith(
            f"the pool daemon (pid {daemon.pid}) did not answer in time: it is stopped "
            f"or wedged, and the operation's outcome is unknown; see {daemon.dir}/daemon.log"
        )
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        client.close()
        daemon.stop()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("answer_started", [False, True])
def test_an_exec_the_daemon_never_answers_fails_within_its_limits(
    monkeypatch: pytest.MonkeyPatch, answer_started: bool
) -> None:
    """Before "started", the daemon has the connect limits; after it, the command_timeout (plus a margin)."""
    ours, theirs = socket.socketpair()
    client = _client.PoolClient("/nonexistent-pool-dir", spawn=False)
    client.bind(SPEC, {})
    client._sock, client._pid, client._bound = ours, os.getpid(), ours
    client._socket = lambda: ours  # type: ignore[method-assign]
    monkeypatch.setattr(_client, "start_budget", lambda bind: 0.3)
    monkeypatch.setattr(_client, "DAEMON_MARGIN", 0.3)
    seen = []
    try:
        with pytest.raises(PoolFailure, match="did not answer in time") as e:
            for kind, _data in client.exec_stream({"cmd": "sleep 1", "command_timeout": 0.1}):
                seen.append(kind)
            if answer_started:
                pytest.fail("no exit status, and no failure")
        if answer_started:
            assert seen == ["started"]
        assert e.value.kind is ErrorKind.DAEMON_LOST
    finally:
        ours.close()
        theirs.close()


@pytest.fixture(autouse=True)
def _started_reply(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the "after started" case: the silent peer says "started" once, then nothing."""
    if "answer_started" not in request.fixturenames or not request.getfixturevalue("answer_started"):
        return
    original = _client.PoolClient._recv_any
    calls = {"n": 0}

    def recv_any(self: _client.PoolClient, sock: socket.socket) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return {"t": "started", "re": self._op, "hit": False, "transport": 1}, b""
        return original(self, sock)

    monkeypatch.setattr(_client.PoolClient, "_recv_any", recv_any)
