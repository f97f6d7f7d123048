"""A command killed by a signal reports 128 + n, as a shell does, instead of "the session was lost".

Paramiko reads no ``exit-signal`` request: a real Paramiko client and server over a socket pair
show that our transport class reads it (and Paramiko still handles the rest); a real session over
the fake SSH wire shows the relay's exit status.
"""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import paramiko
import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.exit_signal import (
    ExitSignals,
    exit_signal,
    status_of,
    transport_class,
)
from daemon_fakes import FakeDaemon, Worker, wait_for
from fake_ssh import FakeServer


class Server(paramiko.ServerInterface):
    def __init__(self) -> None:
        self.exec = threading.Event()

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.exec.set()
        return True


def send_exit_signal(chan: paramiko.Channel, name: str) -> None:
    """What sshd sends for a command that a signal ended (RFC 4254, 6.10)."""
    m = paramiko.Message()
    m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exit-signal")
    m.add_boolean(False)
    m.add_string(name)
    m.add_boolean(False)
    m.add_string("")
    m.add_string("")
    chan.transport._send_user_message(m)  # type: ignore[union-attr]


@pytest.fixture
def pair() -> Iterator[tuple]:
    ours, theirs = socket.socketpair()
    server = Server()
    st = paramiko.Transport(theirs)
    st.add_server_key(paramiko.RSAKey.generate(1024))
    started = threading.Thread(target=st.start_server, kwargs={"server": server}, daemon=True)
    started.start()
    client = transport_class(paramiko.Transport)(ours)
    client.start_client(timeout=10)
    started.join(10)
    client.auth_none("deploy")
    try:
        yield client, st, server
    finally:
        client.close()
        st.close()


def test_the_signal_that_ended_a_command_is_read_and_paramiko_handles_the_rest(pair: tuple) -> None:
    client, st, server = pair
    chan = client.open_session(timeout=10)
    chan.exec_command("sleep 100")
    remote = st.accept(10)
    assert remote is not None and server.exec.wait(10)
    send_exit_signal(remote, "KILL")
    remote.close()
    wait_for(lambda: chan.closed, "the channel to close")
    assert chan.exit_status == -1  # Paramiko kept no status of its own
    assert exit_signal(chan) == "KILL" and exit_signal(chan) is None  # read once
    assert client.is_active()  # the transport is fine


def test_a_shell_reports_a_signal_as_128_plus_its_number() -> None:
    assert status_of("KILL") == 137 and status_of("TERM") == 143 and status_of("SIGINT") == 130


def test_a_command_killed_by_a_signal_exits_128_plus_n_not_session_lost() -> None:
    server = FakeServer(handler=lambda cmd, stdin: None, immediate=lambda cmd: True)
    daemon = FakeDaemon(server)
    worker = Worker(daemon)
    worker.bind()
    try:
        worker.send({"op": "exec", "id": 5, "cmd": "sleep 100", "eof": False})
        wait_for(lambda: server.transports and server.transports[0].all_channels, "the command's channel")
        transport = server.transports[0]
        transport.exit_signals = ExitSignals()  # type: ignore[attr-defined]
        chan = transport.all_channels[0]
        transport.exit_signals.record(chan.get_id(), "TERM")  # type: ignore[attr-defined]
        chan._remote_close()  # closed with no exit status, as after exit-signal
        final = worker.replies(5)[-1][0]
        assert final == {"t": "exit", "re": 5, "rc": 143}, final
    finally:
        worker.close()
        daemon.pool.close_all()
        for t in server.transports:
            t.release_fds()
