"""The real pooled_ssh plugin, loaded by ansible-core's plugin loader; only the wire is faked.

``PoolClient`` (the worker's link to the pool daemon) is replaced by a fake whose
``exec_stream`` yields scripted frames. Scripts are generators: code after a ``yield``
runs when the plugin asks for the next frame, so a script can check what the plugin
sent in reaction to the previous one (a password after a prompt, module data after the
success marker).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from ansible.errors import AnsibleAuthenticationFailure, AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import become_loader, connection_loader, shell_loader

FQCN = "healer.pooled_ssh.pooled_ssh"
Frame = Tuple[str, Any]
Script = Callable[["FakeClient", Dict[str, Any], bytes, bool], Iterator[Frame]]
STARTED: Frame = ("started", {"hit": True, "transport": 7, "waited": 0.0})


class FakeClient:
    """Stands in for PoolClient: records everything, answers from the test's script."""

    def __init__(
        self, wire: Wire, pool_dir: str, idle_exit: float = 60.0, log_level: str = "info", spawn: bool = True
    ) -> None:
        self.wire = wire
        self.pool_dir = pool_dir
        self.idle_exit = idle_exit
        self.spawn = spawn
        self.requests: List[Tuple[Dict[str, Any], bytes, bool]] = []
        self.stdin: List[Tuple[bytes, bool]] = []
        self.calls: List[Dict[str, Any]] = []
        self.closes = 0
        #: The spec and settings of the latest bind; recorded requests show them as "conn" and "pool".
        self.bound: Dict[str, Any] = {}
        wire.clients.append(self)

    def bind(self, spec: Dict[str, Any], settings: Dict[str, Any]) -> None:
        self.bound = {"conn": spec, "pool": settings}

    def exec_stream(self, message: Dict[str, Any], stdin: bytes = b"", eof: bool = True) -> Iterator[Frame]:
        assert self.bound, "exec before bind"
        message = dict(message, **self.bound)
        self.requests.append((message, stdin, eof))
        assert self.wire.script is not None, "the test set no script"
        return self.wire.script(self, message, stdin, eof)

    def send_stdin(self, data: bytes, eof: bool = False) -> None:
        self.stdin.append((data, eof))

    def call(self, message: Dict[str, Any], payload: bytes = b"") -> Dict[str, Any]:
        if message.get("op") in ("put", "fetch"):
            assert self.bound, "transfer before bind"
            message = dict(message, **self.bound)
        self.calls.append(message)
        if self.wire.call_error is not None:
            raise self.wire.call_error
        return dict(self.wire.call_reply)

    def close(self) -> None:
        self.closes += 1


@dataclass
class Wire:
    module: ModuleType
    clients: List[FakeClient] = field(default_factory=list)
    script: Optional[Script] = None
    call_reply: Dict[str, Any] = field(default_factory=lambda: {"t": "ok"})
    call_error: Optional[BaseException] = None

    @property
    def client(self) -> FakeClient:
        assert len(self.clients) == 1, f"expected one client, got {len(self.clients)}"
        return self.clients[0]

    def failure(self, kind: str, msg: str) -> BaseException:
        return self.module.PoolFailure(kind, msg)

    def unavailable(self, msg: str) -> BaseException:
        return self.module.PoolUnavailable(msg)


def frames(*items: Frame) -> Script:
    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield from items

    return script


def new_connection() -> Any:
    conn = connection_loader.get(FQCN, PlayContext(), None)
    assert conn is not None, f"ansible could not load {FQCN}"
    return conn


@pytest.fixture
def plugin_module() -> ModuleType:
    return sys.modules[type(new_connection()).__module__]


@pytest.fixture
def wire(plugin_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Wire:
    wire = Wire(plugin_module)
    real = plugin_module._pool_client()
    fake = types.SimpleNamespace(
        PoolClient=lambda *a, **kw: FakeClient(wire, *a, **kw), current_umask=real.current_umask
    )
    monkeypatch.setattr(plugin_module, "_pool_client", lambda: fake)
    return wire


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options come from the test alone, never from the developer's environment."""
    import os

    for name in list(os.environ):
        if name.startswith(("ANSIBLE_", "SSH_POOL_", "SSH_KEEPALIVE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent.sock")


@pytest.fixture
def make_conn(tmp_path: Path) -> Callable[..., Any]:
    def make(var_options: Optional[Dict[str, Any]] = None, **direct: Any) -> Any:
        conn = new_connection()
        variables = {
            "inventory_hostname": "web1",
            "ansible_host": "192.0.2.10",
            "ansible_user": "deploy",
            "ansible_pooled_ssh_pool_dir": str(tmp_path / "pool"),
        }
        variables.update(var_options or {})
        conn.set_options(var_options=variables, direct=direct or None)
        return conn

    return make


@pytest.fixture
def conn(make_conn: Callable[..., Any], wire: Wire) -> Any:
    return make_conn()


def sudo(password: Optional[str] = "secret") -> Any:
    become = become_loader.get("sudo")
    become.set_options(direct={"become_pass": password} if password is not None else {})
    return become


def wrap(conn: Any, become: Any, cmd: str = "/usr/bin/python3 -c 'print(1)'") -> str:
    """What ActionBase does: let the become plugin build the command, then hand it to the connection."""
    conn.set_become_plugin(become)
    return become.build_become_command(cmd, shell_loader.get("sh"))


# -- loading and options ---------------------------------------------------------------


def test_loaded_by_ansible_under_its_fqcn() -> None:
    conn = new_connection()
    assert type(conn).__name__ == "Connection"
    assert conn.transport == FQCN
    assert type(conn).__module__ == "ansible_collections.healer.pooled_ssh.plugins.connection.pooled_ssh"
    assert conn.has_pipelining is True


def test_options_from_direct_names(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn(
        remote_addr="10.1.1.1",
        port=2200,
        remote_user="ops",
        password="pw",
        pty=False,
        max_connections=3,
        idle_timeout=12.5,
    )
    assert conn.get_option("remote_addr") == "10.1.1.1"
    assert conn.get_option("port") == 2200
    assert conn.get_option("remote_user") == "ops"
    assert conn.get_option("password") == "pw"
    assert conn.get_option("pty") is False
    assert conn.get_option("max_connections") == 3
    assert conn.get_option("idle_timeout") == 12.5


def test_paramiko_variable_names_are_honoured(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn(
        {
            "ansible_host": None,
            "ansible_user": None,
            "ansible_paramiko_host": "10.9.9.9",
            "ansible_paramiko_port": 2022,
            "ansible_paramiko_user": "legacy",
            "ansible_paramiko_pass": "old-secret",
            "ansible_paramiko_proxy_command": "nc -x proxy %h %p",
            "ansible_paramiko_use_rsa_sha2_algorithms": False,
        }
    )
    assert conn.get_option("password") == "old-secret"
    assert conn.get_option("remote_user") == "legacy"
    assert conn.get_option("port") == 2022
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    spec = wire.client.requests[0][0]["conn"]
    assert spec["host"] == "web1"
    assert spec["addr"] == "10.9.9.9"
    assert spec["port"] == 2022
    assert spec["user"] == "legacy"
    assert spec["password"] == "old-secret"
    assert spec["agent_socket"] is None, "a password disables the agent, as with paramiko_ssh"
    assert spec["proxy_command"] == "nc -x proxy 10.9.9.9 2022"
    assert spec["use_rsa_sha2_algorithms"] is False


def test_paramiko_environment_variables_are_honoured(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANSIBLE_PARAMIKO_PTY", "false")
    monkeypatch.setenv("ANSIBLE_PARAMIKO_HOST_KEY_CHECKING", "false")
    monkeypatch.setenv("ANSIBLE_PARAMIKO_LOOK_FOR_KEYS", "no")
    monkeypatch.setenv("ANSIBLE_PARAMIKO_TIMEOUT", "4")
    conn = make_conn()
    assert conn.get_option("pty") is False
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    message = wire.client.requests[0][0]
    assert message["pty"] is False
    assert message["conn"]["host_key_checking"] is False
    assert message["conn"]["look_for_keys"] is False
    assert message["conn"]["timeout"] == 4.0


def test_origin_environment_variables_reach_the_pool_settings(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_POOL_MAX_CONNECTIONS", "20")
    monkeypatch.setenv("SSH_POOL_IDLE_TIMEOUT_MS", "300000")
    monkeypatch.setenv("SSH_POOL_HEALTH_CHECK_INTERVAL_MS", "15000")
    monkeypatch.setenv("SSH_POOL_HEALTH_CHECKS", "false")
    monkeypatch.setenv("SSH_KEEPALIVE_INTERVAL", "2000")
    monkeypatch.setenv("SSH_KEEPALIVE_MAX_MISSED", "5")
    monkeypatch.setenv("SSH_POOL_CONNECTION_TIMEOUT_MS", "2500")
    conn = make_conn()
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    message = wire.client.requests[0][0]
    assert message["pool"] == {
        "max_connections": 20,
        "max_channels": 10,
        "idle_timeout": 300.0,
        "wait_timeout": 60.0,
        "health_checks": False,
        "health_check_interval": 15.0,
        "keepalive_interval": 2.0,
        "keepalive_max_missed": 5,
        "cleanup_interval": 1.0,
        "priority": "normal",
        "on_exhausted": "wait",
    }
    assert message["conn"]["timeout"] == 2.5


def test_the_other_ssh_pool_environment_names_reach_the_pool_settings(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_POOL_MAX_SIZE", "7")
    monkeypatch.setenv("SSH_POOL_TIMEOUT", "120000")
    monkeypatch.setenv("SSH_POOL_CLEANUP_INTERVAL", "5000")
    conn = make_conn()
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    pool = wire.client.requests[0][0]["pool"]
    assert (pool["max_connections"], pool["idle_timeout"], pool["cleanup_interval"]) == (7, 120.0, 5.0)


def test_a_task_var_sets_the_priority_and_on_exhausted(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn({"pooled_ssh_priority": "high", "ansible_pooled_ssh_on_exhausted": "direct"})
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    pool = wire.client.requests[0][0]["pool"]
    assert (pool["priority"], pool["on_exhausted"]) == ("high", "direct")


def test_seconds_win_over_the_origin_milliseconds(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_POOL_IDLE_TIMEOUT_MS", "5000")
    conn = make_conn({"ansible_pooled_ssh_idle_timeout": 90})
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    assert wire.client.requests[0][0]["pool"]["idle_timeout"] == 90.0


def test_the_request_the_plugin_builds(conn: Any, wire: Wire, tmp_path: Path) -> None:
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("echo hi", sudoable=False)
    ((message, stdin, eof),) = wire.client.requests
    assert message["cmd"] == "echo hi"
    assert message["command_timeout"] == 0
    assert message["pty"] is False
    assert (stdin, eof) == (b"", True)
    spec = message["conn"]
    assert (spec["host"], spec["addr"], spec["port"], spec["user"]) == ("web1", "192.0.2.10", 22, "deploy")
    assert spec["password"] is None
    assert spec["agent_socket"] == "/run/agent.sock"
    assert spec["host_key_checking"] is True
    assert spec["host_key_auto_add"] is False
    assert spec["max_auth_attempts"] == 3
    assert spec["max_handshakes_per_address"] == 6
    assert message["pool"]["max_connections"] == 5
    assert message["pool"]["idle_timeout"] == 60.0
    assert wire.client.pool_dir == str(tmp_path / "pool")
    assert wire.client.spawn is True
    assert wire.client.idle_exit == 60.0


def test_bad_option_is_a_task_error_naming_the_host_and_option(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn({"ansible_pooled_ssh_max_connections": 0})
    wire.script = frames(STARTED, ("exit", 0))
    with pytest.raises(AnsibleError, match="pooled_ssh option for web1: max_connections") as info:
        conn.exec_command("true")
    assert not isinstance(info.value, AnsibleConnectionFailure)
    assert all(not c.requests for c in wire.clients)


# -- exec_command ----------------------------------------------------------------------


def test_exec_command_returns_rc_stdout_stderr(conn: Any, wire: Wire) -> None:
    wire.script = frames(STARTED, ("out", b"a"), ("err", b"e1"), ("out", b"b\n"), ("err", b"e2"), ("exit", 3))
    assert conn.exec_command("cmd", sudoable=False) == (3, b"ab\n", b"e1e2")


def test_exec_command_sends_pipelined_data_with_the_request(conn: Any, wire: Wire) -> None:
    wire.script = frames(STARTED, ("out", b"{}"), ("exit", 0))
    assert conn.exec_command("/usr/bin/python3", in_data=b"MODULE") == (0, b"{}", b"")
    ((_message, stdin, eof),) = wire.client.requests
    assert (stdin, eof) == (b"MODULE", True)
    assert wire.client.stdin == []


def test_one_client_per_connection_object(conn: Any, wire: Wire) -> None:
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("a")
    conn.exec_command("b")
    assert len(wire.clients) == 1
    assert [m["cmd"] for m, _unused, _unused2 in wire.client.requests] == ["a", "b"]


@pytest.mark.parametrize(
    ("sudoable", "in_data", "pty_option", "expected"),
    [
        (True, None, None, True),
        (True, b"data", None, False),
        (False, None, None, False),
        (False, b"data", None, False),
        (True, None, False, False),
    ],
)
def test_pty_only_for_sudoable_commands_without_stdin(
    make_conn: Callable[..., Any],
    wire: Wire,
    sudoable: bool,
    in_data: Optional[bytes],
    pty_option: Optional[bool],
    expected: bool,
) -> None:
    conn = make_conn(**({"pty": pty_option} if pty_option is not None else {}))
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("cmd", in_data=in_data, sudoable=sudoable)
    assert wire.client.requests[0][0]["pty"] is expected


# -- become ----------------------------------------------------------------------------


def test_become_prompt_password_success_then_module_data(conn: Any, wire: Wire) -> None:
    become = sudo("secret")
    cmd = wrap(conn, become)
    prompt = become.prompt.encode()
    success = become.success.encode()
    assert prompt and success and prompt in cmd.encode()

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        assert (stdin, eof) == (b"", False), "module data must wait for the escalation"
        yield STARTED
        yield "out", prompt[:10]  # the prompt arrives in pieces
        assert client.stdin == []
        yield "out", prompt[10:] + b" "
        assert client.stdin == [(b"secret\n", False)]
        yield "out", b"\n" + success[:5]
        yield "out", success[5:] + b"\n" + b'{"changed": false'
        assert client.stdin == [(b"secret\n", False), (b"MODULE", True)]
        yield "out", b"}\n"
        yield "err", b"warning\n"
        yield "exit", 0

    wire.script = script
    rc, out, err = conn.exec_command(cmd, in_data=b"MODULE")
    assert rc == 0
    assert out == b'{"changed": false}\n'
    assert err == b"warning\n"
    message = wire.client.requests[0][0]
    assert message["cmd"] == cmd
    assert message["pty"] is False


def test_become_without_pipelining_sends_eof_after_success(conn: Any, wire: Wire) -> None:
    become = sudo("secret")
    cmd = wrap(conn, become)

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        yield "out", become.prompt.encode()
        yield "out", b"\r\n" + become.success.encode() + b"\r\nhello\r\n"
        yield "exit", 0

    wire.script = script
    assert conn.exec_command(cmd) == (0, b"hello\r\n", b"")
    assert wire.client.stdin == [(b"secret\n", False), (b"", True)]
    assert wire.client.requests[0][0]["pty"] is True


def test_become_without_a_prompt_waits_for_the_success_marker(conn: Any, wire: Wire) -> None:
    # NOPASSWD sudo: no password configured, sudo -n, only the success marker comes back.
    become = sudo(None)
    cmd = wrap(conn, become)
    assert " -n " in f" {cmd} "

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        assert (stdin, eof) == (b"", False)
        yield STARTED
        yield "out", become.success.encode() + b"\n"
        assert client.stdin == [(b"DATA", True)]
        yield "out", b"result"
        yield "exit", 0

    wire.script = script
    assert conn.exec_command(cmd, in_data=b"DATA") == (0, b"result", b"")


def test_wrong_become_password(conn: Any, wire: Wire) -> None:
    become = sudo("wrong")
    cmd = wrap(conn, become)

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        yield "out", become.prompt.encode()
        yield "out", b"\r\nSorry, try again.\r\n" + become.prompt.encode()
        pytest.fail("the plugin kept reading after a wrong password")

    wire.script = script
    with pytest.raises(AnsibleError, match="Incorrect sudo password") as info:
        conn.exec_command(cmd, in_data=b"MODULE")
    assert not isinstance(info.value, AnsibleConnectionFailure)
    assert wire.client.stdin == [(b"wrong\n", False)], "the module must never be sent"
    assert wire.client.closes == 1, "the command's channel is abandoned"


def test_second_prompt_without_message_is_an_incorrect_password(conn: Any, wire: Wire) -> None:
    become = sudo("wrong")
    cmd = wrap(conn, become)
    wire.script = frames(STARTED, ("out", become.prompt.encode()), ("out", b"\n" + become.prompt.encode()), ("exit", 1))
    with pytest.raises(AnsibleError, match="Incorrect sudo password"):
        conn.exec_command(cmd)


def test_missing_sudo_password(conn: Any, wire: Wire) -> None:
    become = sudo(None)
    cmd = wrap(conn, become)
    wire.script = frames(STARTED, ("err", b""), ("out", b"sudo: a password is required\r\n"), ("exit", 1))
    with pytest.raises(AnsibleError, match="Missing sudo password") as info:
        conn.exec_command(cmd)
    assert not isinstance(info.value, AnsibleConnectionFailure)
    assert wire.client.stdin == []


def test_missing_sudo_password_reported_at_exit(conn: Any, wire: Wire) -> None:
    # sudo's message arrives without a newline, just before the exit status.
    become = sudo(None)
    cmd = wrap(conn, become)
    wire.script = frames(STARTED, ("out", b"Sorry, a password is required to run sudo"), ("exit", 1))
    with pytest.raises(AnsibleError, match="Missing sudo password"):
        conn.exec_command(cmd)


def test_missing_su_password(conn: Any, wire: Wire) -> None:
    # su always prompts; with no password configured that is a missing password, not a wrong one.
    become = become_loader.get("su")
    become.set_options(direct={})
    cmd = wrap(conn, become)
    wire.script = frames(STARTED, ("out", b"Password: "), ("exit", 1))
    with pytest.raises(AnsibleError, match="Missing su password"):
        conn.exec_command(cmd)


def test_su_with_password(conn: Any, wire: Wire) -> None:
    become = become_loader.get("su")
    become.set_options(direct={"become_pass": "rootpw"})
    cmd = wrap(conn, become)

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        yield "out", b"Password: "
        assert client.stdin == [(b"rootpw\n", False)]
        yield "out", b"\n" + become.success.encode() + b"\nout"
        yield "exit", 0

    wire.script = script
    assert conn.exec_command(cmd) == (0, b"out", b"")


def test_escalation_that_never_answers_times_out(conn: Any, wire: Wire) -> None:
    become = sudo("secret")
    cmd = wrap(conn, become)
    seen: List[Optional[float]] = []

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        yield "out", b"Last login: yesterday\n"
        seen.append(getattr(client, "recv_timeout", None))
        raise wire.failure("recv_timeout", "no reply within the deadline")

    wire.script = script
    with pytest.raises(AnsibleConnectionFailure, match="timed out waiting for privilege escalation"):
        conn.exec_command(cmd)  # UNREACHABLE, as the ssh plugin reports a become timeout
    assert seen and seen[0] is not None and 0 < seen[0] <= 10.0, "escalation is bounded by the connection timeout"
    assert getattr(wire.client, "recv_timeout", None) is None, "the deadline must not outlive the escalation"
    assert wire.client.stdin == []


def test_not_sudoable_commands_ignore_become(conn: Any, wire: Wire) -> None:
    wrap(conn, sudo("secret"))
    wire.script = frames(STARTED, ("out", b"plain"), ("exit", 0))
    assert conn.exec_command("mkdir -p ~/.ansible/tmp/x", in_data=b"D", sudoable=False) == (0, b"plain", b"")
    assert wire.client.requests[0][1:] == (b"D", True)
    assert wire.client.stdin == []


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("auth", AnsibleAuthenticationFailure),
        ("connect", AnsibleConnectionFailure),
        ("hostkey", AnsibleConnectionFailure),
        ("exhausted", AnsibleConnectionFailure),
        ("unknown_outcome", AnsibleConnectionFailure),
        ("daemon_lost", AnsibleConnectionFailure),
        ("timeout", AnsibleConnectionFailure),
        ("shutdown", AnsibleConnectionFailure),
    ],
)
def test_pool_errors_that_make_the_host_unreachable(conn: Any, wire: Wire, kind: str, expected: type) -> None:
    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        raise wire.failure(kind, f"{kind} happened on web1")

    wire.script = script
    with pytest.raises(AnsibleConnectionFailure) as info:
        conn.exec_command("cmd")
    assert info.type is expected
    assert f"{kind} happened on web1" in str(info.value)


def test_exhaustion_message_reaches_the_user(conn: Any, wire: Wire) -> None:
    msg = "Connection pool exhausted for web1:22 (max: 5); waited 60s"

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield from ()  # a generator that raises when it is first iterated
        raise wire.failure("exhausted", msg)

    wire.script = script
    with pytest.raises(AnsibleConnectionFailure, match=r"Connection pool exhausted for web1:22 \(max: 5\)"):
        conn.exec_command("cmd")


@pytest.mark.parametrize("kind", ["file", "command", "something_new"])
def test_other_pool_errors_fail_the_task_only(conn: Any, wire: Wire, kind: str) -> None:
    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield from ()  # a generator that raises when it is first iterated
        raise wire.failure(kind, "no such file: /etc/x")

    wire.script = script
    with pytest.raises(AnsibleError, match="no such file") as info:
        conn.exec_command("cmd")
    assert not isinstance(info.value, AnsibleConnectionFailure)


def test_daemon_unavailable_is_unreachable(conn: Any, wire: Wire) -> None:
    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield from ()  # a generator that raises when it is first iterated
        raise wire.unavailable("the pool daemon did not start")

    wire.script = script
    with pytest.raises(AnsibleConnectionFailure, match="pooled_ssh: the pool daemon did not start"):
        conn.exec_command("cmd")


# -- file transfer ---------------------------------------------------------------------


def test_put_and_fetch_files(conn: Any, wire: Wire, tmp_path: Path) -> None:
    local = tmp_path / "in.txt"
    local.write_text("x")
    wire.call_reply = {"t": "done", "hit": True, "transport": 3}
    conn.put_file(str(local), "/remote/in.txt")
    conn.fetch_file("/remote/out.txt", str(tmp_path / "out.txt"))
    put, fetch = wire.client.calls
    assert (put["op"], put["local"], put["remote"]) == ("put", str(local), "/remote/in.txt")
    assert (fetch["op"], fetch["local"], fetch["remote"]) == ("fetch", str(tmp_path / "out.txt"), "/remote/out.txt")
    assert put["conn"]["host"] == "web1" and "pool" in put


def test_put_of_a_missing_local_file(conn: Any, wire: Wire, tmp_path: Path) -> None:
    with pytest.raises(AnsibleFileNotFound):
        conn.put_file(str(tmp_path / "nope"), "/remote/x")
    assert all(not c.calls for c in wire.clients)


def test_transfer_errors_are_mapped(conn: Any, wire: Wire, tmp_path: Path) -> None:
    local = tmp_path / "in.txt"
    local.write_text("x")
    wire.call_error = wire.failure("file", "permission denied: /etc/shadow")
    with pytest.raises(AnsibleError, match="permission denied") as info:
        conn.put_file(str(local), "/etc/shadow")
    assert not isinstance(info.value, AnsibleConnectionFailure)
    wire.call_error = wire.failure("connect", "connection refused")
    with pytest.raises(AnsibleConnectionFailure, match="connection refused"):
        conn.fetch_file("/x", str(tmp_path / "y"))


# -- reset and close -------------------------------------------------------------------


def test_reset_on_a_never_connected_instance_evicts_without_spawning(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn({"ansible_port": 2222})
    wire.call_reply = {"t": "evicted", "closed": 2}
    conn.reset()
    client = wire.client
    assert client.spawn is False
    assert client.calls == [{"op": "evict", "host": "web1", "port": 2222, "user": "deploy"}]
    assert client.closes == 1
    assert not conn.connected


def test_reset_tolerates_no_daemon(conn: Any, wire: Wire) -> None:
    wire.call_error = wire.unavailable("no pool daemon is running")
    conn.reset()
    assert wire.client.spawn is False
    assert wire.client.closes == 1


def test_reset_reports_a_daemon_error(conn: Any, wire: Wire) -> None:
    wire.call_error = wire.failure("protocol", "garbled")
    with pytest.raises(AnsibleConnectionFailure, match="garbled"):
        conn.reset()
    assert wire.client.closes == 1


def test_reset_of_a_connected_instance_uses_its_client_and_keeps_it(conn: Any, wire: Wire) -> None:
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    conn.reset()
    assert len(wire.clients) == 1
    assert wire.client.calls == [{"op": "evict", "host": "web1", "port": 22, "user": "deploy"}]
    assert wire.client.closes == 0
    conn.exec_command("true")
    assert len(wire.client.requests) == 2


def test_close_releases_the_link_and_never_evicts(conn: Any, wire: Wire) -> None:
    wire.script = frames(STARTED, ("exit", 0))
    conn.exec_command("true")
    assert conn.connected
    conn.close()
    assert wire.client.closes == 1
    assert wire.client.calls == []
    assert not conn.connected
    conn.close()  # twice is harmless
    assert wire.client.closes == 1
    conn.exec_command("true")  # and the next command reconnects
    assert len(wire.clients) == 2


# -- pipelining ------------------------------------------------------------------------


def test_pipelining_on_by_default_and_off_for_async(conn: Any) -> None:
    assert conn.is_pipelining_enabled() is True
    assert conn.is_pipelining_enabled(wrap_async=True) is False


def test_pipelining_option_off(make_conn: Callable[..., Any], wire: Wire) -> None:
    assert make_conn({"ansible_pipelining": False}).is_pipelining_enabled() is False
    assert make_conn(pipelining=False).is_pipelining_enabled() is False


def test_pipelining_from_the_environment(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANSIBLE_PIPELINING", "false")
    assert make_conn().is_pipelining_enabled() is False


def test_pipelining_follows_the_become_plugin(conn: Any) -> None:
    conn.set_become_plugin(sudo("x"))
    assert conn.is_pipelining_enabled() is True
    su = become_loader.get("su")
    assert su.pipelining is False
    conn.set_become_plugin(su)
    assert conn.is_pipelining_enabled() is False


def test_become_password_configured_but_never_asked(conn: Any, wire: Wire) -> None:
    # sudo with NOPASSWD ignores -p: the success marker comes first, and no password is ever sent.
    become = sudo("secret")
    cmd = wrap(conn, become)

    def script(client: FakeClient, message: Dict[str, Any], stdin: bytes, eof: bool) -> Iterator[Frame]:
        yield STARTED
        yield "out", become.success.encode() + b"\n"
        assert client.stdin == [(b"MODULE", True)]
        yield "out", b"{}"
        yield "exit", 0

    wire.script = script
    assert conn.exec_command(cmd, in_data=b"MODULE") == (0, b"{}", b"")


def test_bad_daemon_option_is_a_task_error(make_conn: Callable[..., Any], wire: Wire) -> None:
    conn = make_conn({"ansible_pooled_ssh_daemon_idle_timeout": -1})
    wire.script = frames(STARTED, ("exit", 0))
    with pytest.raises(AnsibleError, match="daemon_idle_timeout"):
        conn.exec_command("true")


def test_a_pipelined_module_with_the_executor_off_never_reaches_its_worker_side(
    make_conn: Callable[..., Any], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``remote_executor: off`` the option is read where the other options are: the executor's
    worker side (imported on first use) is not asked, and so not imported."""
    conn = make_conn({"ansible_pooled_ssh_remote_executor": "off"})
    module = sys.modules[type(conn).__module__]
    monkeypatch.setattr(module, "executor_xrun", lambda *a, **k: pytest.fail("the executor was asked"))
    wire.script = frames(STARTED, ("exit", 0))
    assert conn.exec_command("/bin/sh -c /usr/bin/python3", in_data=b"#!/usr/bin/python3\n")[0] == 0


#: Run in a fresh interpreter: load the plugin as a task's worker does, set its options, and say
#: which of the worker's pool modules are imported before and after the first request's client.
LIGHT_WORKER = r"""
import json, sys
from ansible.plugins.loader import connection_loader, init_plugin_loader
from ansible.playbook.play_context import PlayContext
init_plugin_loader()
conn = connection_loader.get("healer.pooled_ssh.pooled_ssh", PlayContext(), None)
conn.set_options(var_options={"inventory_hostname": "web1", "ansible_host": "192.0.2.10"})
names = ("healer_pooled_ssh._client", "healer_pooled_ssh.wire.messages", "healer_pooled_ssh._client_connect")
before = [n for n in names if n in sys.modules]
conn._new_client(spawn=False)
print(json.dumps({"before": before, "after": [n for n in names if n in sys.modules]}))
"""


def test_a_worker_that_never_connects_imports_no_client(collections_root: Path) -> None:
    """set_fact, debug, assert: a third to half of a role's workers load the connection and never
    send a request. They import only what finds or starts the daemon; the client and its wire
    messages (about 20 dataclasses) come with the first request."""
    import json
    import os
    import subprocess

    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_root))
    done = subprocess.run([sys.executable, "-c", LIGHT_WORKER], capture_output=True, env=env, check=True, text=True)
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported["before"] == ["healer_pooled_ssh._client_connect"]
    assert imported["after"] == [
        "healer_pooled_ssh._client",
        "healer_pooled_ssh.wire.messages",
        "healer_pooled_ssh._client_connect",
    ]


# -- connection warming (a worker whose task never connected) ------------------------------


class HeldSocket:
    """Stands in for the early socket's thread: already connected, to the test's end of a socket pair."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.pool_dir = sock, "unused"

    def join(self) -> None:
        pass


def unused_connection(make_conn: Callable[..., Any], **var_options: Any) -> Tuple[Any, Any, Any]:
    """A connection whose task never connected, its early socket and the daemon's end of it."""
    import socket

    conn = make_conn(var_options or None)
    ours, daemon = socket.socketpair()
    daemon.settimeout(10)
    conn._opening = HeldSocket(ours)
    return conn, ours, daemon


def test_a_worker_that_never_connected_asks_for_its_host_ahead(
    make_conn: Callable[..., Any], plugin_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin_module._client_connect, "WARM_REPLY", 0.2)  # the test's daemon never answers
    conn, ours, daemon = unused_connection(make_conn)
    conn.close()
    proto = plugin_module._client_connect.proto
    got = [proto.recv_frame(daemon)[0] for _frame in range(3)]
    assert [m["op"] for m in got] == ["hello", "bind", "warm"]
    assert got[1]["conn"]["addr"] == "192.0.2.10" and got[1]["conn"]["user"] == "deploy"
    assert ours.fileno() == -1, "the early socket is closed, answered or not"
    assert conn._opening is None


@pytest.mark.parametrize(
    "options",
    [{"ansible_pooled_ssh_warm_transports": False}, {"ansible_pooled_ssh_ssh_config_file": "/nonexistent/config"}],
)
def test_no_warm_request_when_off_or_with_an_ssh_config(make_conn: Callable[..., Any], options: Dict[str, Any]) -> None:
    conn, ours, daemon = unused_connection(make_conn, **options)
    conn.close()
    assert daemon.recv(1) == b"", "nothing was sent before the socket closed"
    assert ours.fileno() == -1


def test_a_failure_while_asking_ahead_still_closes_the_socket(
    make_conn: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, ours, daemon = unused_connection(make_conn)

    def unreadable() -> Dict[str, Any]:
        raise PermissionError("ssh config not readable")

    monkeypatch.setattr(conn, "_request", unreadable)
    conn.close()  # never raises: warming is only a speed-up
    assert daemon.recv(1) == b""
    assert ours.fileno() == -1 and conn._opening is None
