"""The exec operation, its channel policy, the spare channel and the relay, against a fake server.

A real session (daemon/session.py) over a socket pair, a real pool, real exec/relay/spare code;
only the SSH wire is fake (fake_ssh.py).
"""

from __future__ import annotations

import resource
from typing import Optional, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames
from daemon_fakes import FakeDaemon, Worker, wait_for
from fake_ssh import FakeServer


def worker_recv(worker: Worker) -> Tuple[dict, bytes]:
    return frames.recv_frame(worker.sock)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def test_a_command_runs_once_and_its_output_and_status_come_back(worker: Worker, server: FakeServer) -> None:
    out, err, final = worker.run(2, "exit 3")
    assert (out, err, final) == (b"", b"bye\n", {"t": "exit", "re": 2, "rc": 3})
    assert server.ran == [("exit 3", b"")]


def test_input_in_the_request_and_in_stdin_frames_reaches_the_command(worker: Worker, server: FakeServer) -> None:
    worker.send({"op": "exec", "id": 2, "cmd": "cat", "eof": False}, b"first ")
    reply, _unused = worker_recv(worker)
    assert reply["t"] == "started" and reply["re"] == 2 and reply["hit"] is False
    worker.send({"op": "stdin", "id": 2}, b"second")
    worker.send({"op": "eof", "id": 2})
    replies = worker.replies(2)
    assert b"".join(d for r, d in replies if r["t"] == "out") == b"first second"
    assert replies[-1][0] == {"t": "exit", "re": 2, "rc": 0}
    assert server.ran == [("cat", b"first second")]


def test_the_next_command_takes_the_spare_channel(worker: Worker, server: FakeServer, daemon: FakeDaemon) -> None:
    assert worker.run(2, "echo 1")[0] == b"1\n"
    (transport,) = server.transports
    wait_for(lambda: daemon.pool.entries()[0].conn.spare is not None, "the spare channel")
    assert transport.opened == 2
    assert worker.run(3, "echo 2")[0] == b"2\n"
    # The second command ran on the channel opened ahead of it.
    assert transport.all_channels[1].command == "echo 2"
    assert [c for c, _unused in server.ran] == ["echo 1", "echo 2"]


def test_a_spare_the_server_closed_is_replaced_and_the_command_runs_once(
    worker: Worker, server: FakeServer, daemon: FakeDaemon
) -> None:
    worker.run(2, "echo 1")
    pt = daemon.pool.entries()[0].conn
    wait_for(lambda: pt.spare is not None, "the spare channel")
    assert pt.spare is not None
    pt.spare.channel.stale = True  # the server timed it out: it closes it when the exec arrives
    out, _unused, final = worker.run(3, "echo 2")
    assert (out, final["t"]) == (b"2\n", "exit")
    assert [c for c, _unused in server.ran] == ["echo 1", "echo 2"]
    assert len(server.transports) == 1  # the same, live transport


def test_a_refused_exec_is_reported_and_not_retried(worker: Worker, server: FakeServer) -> None:
    server.refuse_exec = True
    _unused, _unused2, final = worker.run(2, "echo never")
    assert final["t"] == "error" and final["kind"] == "refused", final
    assert "127.0.0.9:2222: the server refused the request (exec)" in final["msg"]
    assert server.ran == []


def test_a_transport_lost_mid_command_is_unknown_outcome_and_never_rerun(worker: Worker, server: FakeServer) -> None:
    server.handler = lambda cmd, stdin: None if cmd == "sleep" else (b"ok", b"", 0)
    worker.send({"op": "exec", "id": 2, "cmd": "sleep"})
    reply, _unused = worker_recv(worker)
    assert reply["t"] == "started"
    wait_for(lambda: server.ran, "the command to start")
    server.transports[0].die()
    final = worker.replies(2)[-1][0]
    assert final["kind"] == "unknown_outcome" and "connection was lost" in final["msg"], final
    assert "not re-run" in final["msg"]
    assert [c for c, _unused in server.ran] == ["sleep"]
    # The next command gets a new transport.
    assert worker.run(3, "next")[0] == b"ok"
    assert len(server.transports) == 2


def test_a_command_past_its_timeout_is_abandoned_with_a_clear_error(worker: Worker, server: FakeServer) -> None:
    server.handler = lambda cmd, stdin: None
    _unused, _unused2, final = worker.run(2, "hang", command_timeout=0.05)
    assert final["kind"] == "timeout" and "did not finish within 0.05s" in final["msg"], final


def test_late_input_of_a_finished_command_is_dropped_not_read_as_a_request(worker: Worker, server: FakeServer) -> None:
    """The bug this design fixes: a late end-of-input frame was answered as a request, and every
    later reply on the socket belonged to the request before it."""
    assert worker.run(2, "echo a")[0] == b"a\n"
    worker.send({"op": "stdin", "id": 2}, b"too late")
    worker.send({"op": "eof", "id": 2})
    worker.send({"op": "cancel", "id": 77})
    out, _unused, final = worker.run(3, "echo b")
    assert (out, final) == (b"b\n", {"t": "exit", "re": 3, "rc": 0})
    assert [c for c, _unused in server.ran] == ["echo a", "echo b"]


def test_a_request_while_a_command_runs_is_refused_and_the_command_goes_on(worker: Worker) -> None:
    worker.send({"op": "exec", "id": 2, "cmd": "cat", "eof": False})
    assert worker_recv(worker)[0]["t"] == "started"
    worker.send({"op": "ping", "id": 3})
    reply, _unused = worker_recv(worker)
    assert reply["re"] == 3 and reply["kind"] == "protocol" and "one operation at a time" in reply["msg"], reply
    worker.send({"op": "stdin", "id": 3}, b"not mine")  # input of the refused request: dropped
    worker.send({"op": "stdin", "id": 2}, b"mine")
    worker.send({"op": "eof", "id": 2})
    replies = worker.replies(2)
    assert b"".join(d for r, d in replies if r["t"] == "out") == b"mine"


def test_cancel_closes_the_channel(worker: Worker, server: FakeServer, daemon: FakeDaemon) -> None:
    server.handler = lambda cmd, stdin: None
    worker.send({"op": "exec", "id": 2, "cmd": "hang"})
    assert worker_recv(worker)[0]["t"] == "started"
    worker.send({"op": "cancel", "id": 2})
    wait_for(lambda: daemon.pool.stats()["total"]["channelsInUse"] == 0, "the slot to come back")
    assert server.transports[0].all_channels[0].closed
    worker.send({"op": "ping", "id": 3})
    assert worker_recv(worker)[0] == {"t": "pong", "re": 3}


def test_a_full_server_turns_spares_off_and_commands_still_run(
    worker: Worker, server: FakeServer, daemon: FakeDaemon
) -> None:
    server.max_sessions = 1
    worker.run(2, "echo 1")
    pt = daemon.pool.entries()[0].conn
    wait_for(lambda: pt.spare_pending is None, "the spare attempt")
    assert pt.spare_off and pt.spare is None
    assert worker.run(3, "echo 2")[0] == b"2\n"


def test_a_pty_is_asked_for_with_the_terminal_size(worker: Worker, server: FakeServer) -> None:
    worker.run(2, "echo t", pty=True, term="xterm", width=120, height=40)
    assert server.transports[0].all_channels[0].pty == ("xterm", 120, 40)


def test_exec_before_bind_is_refused(daemon: FakeDaemon) -> None:
    w = Worker(daemon)
    try:
        _unused, _unused2, final = w.run(1, "echo x")
        assert final["kind"] == "protocol" and "no bind" in final["msg"], final
    finally:
        w.close()


def _raise_nofile(at_least: int) -> Optional[Tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= at_least:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, at_least), hard))
    return soft, hard


def test_the_relay_serves_channels_with_descriptors_above_1024(daemon: FakeDaemon, server: FakeServer) -> None:
    """select.select() raises ValueError for a descriptor from 1024 on; the relay must not care."""
    old = _raise_nofile(4096)
    try:
        server.high_fds = 2000
        w = Worker(daemon)
        try:
            w.bind()
            out, _unused, final = w.run(2, "echo high")
            assert server.transports[0].all_channels[0].fileno() >= 2000
            assert (out, final["t"]) == (b"high\n", "exit")
        finally:
            w.close()
    finally:
        if old is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_an_exec_left_unanswered_by_a_dead_transport_is_unknown_and_never_rerun(
    worker: Worker, server: FakeServer
) -> None:
    """The exec request reached the server, which ran it; the connection died before the answer."""
    server.die_after_exec = True
    _unused, _unused2, final = worker.run(2, "echo run >> marker")
    assert final["t"] == "error" and final["kind"] == "unknown_outcome", final
    assert "127.0.0.9:2222: the SSH connection was lost after the command was sent" in final["msg"], final
    assert "not re-run" in final["msg"]
    assert [c for c, _unused in server.ran] == ["echo run >> marker"]
    assert len(server.transports) == 1  # no second attempt on a fresh transport


def test_a_command_that_stops_reading_its_input_still_meets_its_deadline(
    worker: Worker, server: FakeServer, daemon: FakeDaemon
) -> None:
    """Input past what the channel takes waits in the daemon; the deadline and the reply still come."""
    server.handler = lambda cmd, stdin: None

    def running(cmd: str):
        return next(c for c in server.transports[0].all_channels if c.command == cmd)

    worker.send({"op": "exec", "id": 2, "cmd": "sleep", "eof": False, "command_timeout": 0.3})
    reply, _unused = worker_recv(worker)
    assert reply["t"] == "started"
    running("sleep").window = 10
    for _round in range(3):
        worker.send({"op": "stdin", "id": 2}, b"x" * 65536)
    worker.send({"op": "eof", "id": 2})
    final = worker.replies(2)[-1][0]
    assert final["kind"] == "timeout" and "did not finish within 0.3s" in final["msg"], final
    chan = running("sleep")
    assert chan.stdin == b"x" * 10 and not chan.stdin_closed


def test_a_command_that_exits_without_reading_reports_its_own_status(worker: Worker, server: FakeServer) -> None:
    """sh: interpreter not found, rc 127, input unread: the status is the command's, not a broken pipe."""
    worker.send({"op": "exec", "id": 2, "cmd": "/nonexistent/python3", "eof": False})
    reply, _unused = worker_recv(worker)
    assert reply["t"] == "started"
    chan = next(c for c in server.transports[0].all_channels if c.command == "/nonexistent/python3")
    chan.window = 0
    chan.feed(err=b"sh: 1: /nonexistent/python3: not found\n")
    chan.finish(127)
    for _round in range(3):
        worker.send({"op": "stdin", "id": 2}, b"m" * 65536)
    worker.send({"op": "eof", "id": 2})
    replies = worker.replies(2)
    assert b"".join(d for r, d in replies if r["t"] == "err") == b"sh: 1: /nonexistent/python3: not found\n"
    assert replies[-1][0] == {"t": "exit", "re": 2, "rc": 127}
    assert worker.run(3, "echo next")[0] == b"next\n"
