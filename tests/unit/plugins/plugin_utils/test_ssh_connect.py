"""Opening a transport (socket, handshake retries, host key check) and authenticating, with Paramiko's
Transport faked: the server's banner, key and authentication answers are scripted."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Set, Tuple

import paramiko
import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _known_hosts
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import ErrorKind, PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import PoolSettings
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh import connect as connect_mod
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.connect import Connector, Target
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.spec import ConnectionSpec, JumpHop

HOST_KEY = paramiko.RSAKey.generate(1024)
OTHER_KEY = paramiko.RSAKey.generate(1024)
CLIENT_KEY = paramiko.RSAKey.generate(1024)


@dataclass
class Script:
    """What the fake server does."""

    host_key: paramiko.PKey = HOST_KEY
    #: Handshakes the server drops before its banner (MaxStartups) before it answers one.
    drops: int = 0
    #: Public keys (base64) it accepts, and the password.
    keys: Set[str] = field(default_factory=set)
    password: Optional[str] = None
    #: Methods it allows (None: any); publickey refused with BadAuthenticationType otherwise.
    methods: Optional[List[str]] = None
    handshakes: int = 0
    attempts: List[str] = field(default_factory=list)
    transports: List[FakeHandshake] = field(default_factory=list)
    socks: List[Any] = field(default_factory=list)


SCRIPT = Script()


class FakeHandshake:
    """Stands in for ``paramiko.Transport`` from the handshake to the end of authentication."""

    def __init__(self, sock: Any, disabled_algorithms: Any = None) -> None:
        self.script = SCRIPT
        self.script.transports.append(self)
        self.script.socks.append(sock)
        self.sock = sock
        self.host_key: Optional[paramiko.PKey] = None
        self.authenticated = False
        self.active = True
        self.banner_timeout = 0.0
        self.auth_timeout = 0.0
        self.channel_timeout = 0.0
        self.keepalive: Optional[int] = None
        #: What Paramiko's auth handler keeps after a login (the password for the transport's life).
        self.auth_handler = type(
            "AuthHandler", (), {"password": None, "private_key": None, "interactive_handler": None}
        )()
        self.options = type("Options", (), {"key_types": ["ssh-ed25519", "ssh-rsa", "rsa-sha2-512"]})()
        self.preferred_keys = (
            "ssh-ed25519",
            "rsa-sha2-512",
            "ssh-ed25519-cert-v01@openssh.com",
            "rsa-sha2-512-cert-v01@openssh.com",
        )
        self.host_key_type: Optional[str] = None  # the negotiated algorithm: a plain key here

    def get_security_options(self) -> Any:
        return self.options

    def start_client(self, timeout: float = 0) -> None:
        self.script.handshakes += 1
        if self.script.handshakes <= self.script.drops:
            try:
                raise EOFError()
            except EOFError:
                raise paramiko.SSHException("Error reading SSH protocol banner") from None
        self.host_key = self.script.host_key

    def get_remote_server_key(self) -> paramiko.PKey:
        assert self.host_key is not None
        return self.host_key

    def _allowed(self, method: str) -> None:
        methods = self.script.methods
        if methods is not None and method not in methods:
            raise paramiko.BadAuthenticationType("Bad authentication type", methods)

    def auth_publickey(self, user: str, key: paramiko.PKey) -> List[str]:
        self._allowed("publickey")
        self.script.attempts.append("publickey")
        if key.get_base64() not in self.script.keys:
            raise paramiko.AuthenticationException("Authentication failed.")
        self.authenticated = True
        self.auth_handler.private_key = key
        return []

    def auth_password(self, user: str, password: str, fallback: bool = True) -> List[str]:
        self._allowed("password")
        self.script.attempts.append("password")
        if password != self.script.password:
            raise paramiko.AuthenticationException("Authentication failed.")
        self.authenticated = True
        self.auth_handler.password = password
        self.auth_handler.interactive_handler = lambda *_: [password]
        return []

    def is_authenticated(self) -> bool:
        return self.authenticated

    def set_keepalive(self, interval: int) -> None:
        self.keepalive = interval

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.active = False


@pytest.fixture
def listener() -> Iterator[Tuple[str, int]]:
    """A port that accepts TCP connections (the handshake itself is faked)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()
    sock.close()


@pytest.fixture(autouse=True)
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[Script]:
    global SCRIPT
    SCRIPT = Script()
    monkeypatch.setattr(connect_mod.paramiko, "Transport", FakeHandshake)
    yield SCRIPT
    for sock in SCRIPT.socks:
        if hasattr(sock, "close"):
            sock.close()


def known_hosts(tmp_path: Path, address: Tuple[str, int], key: paramiko.PKey = HOST_KEY) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(f"{_known_hosts.host_name(*address)} {key.get_name()} {key.get_base64()}\n")
    return path


def key_file(tmp_path: Path, key: paramiko.PKey = CLIENT_KEY, passphrase: Optional[str] = None) -> str:
    path = tmp_path / f"id_{len(list(tmp_path.iterdir()))}"
    key.write_private_key_file(str(path), password=passphrase)
    return str(path)


def target(address: Tuple[str, int], **spec: Any) -> Target:
    fields = dict(host="web1", addr=address[0], port=address[1], user="deploy", look_for_keys=False, timeout=10.0)
    fields.update(spec)
    return Target(ConnectionSpec(**fields), PoolSettings())


def connect(connector: Connector, t: Target) -> Any:
    return connector.connect(t.spec.pool_key(b"salt"), t)


def test_a_known_host_and_an_accepted_key_give_a_verified_transport(listener, script, tmp_path) -> None:
    script.keys = {CLIENT_KEY.get_base64()}
    pt = connect(
        Connector(),
        target(listener, private_key_file=key_file(tmp_path), known_hosts_files=[str(known_hosts(tmp_path, listener))]),
    )
    assert pt.host_key_verified and pt.transport.authenticated and pt.transport.keepalive == 0
    assert script.attempts == ["publickey"]
    # known_hosts' key type is asked for first.
    assert pt.transport.options.key_types[0] in ("ssh-rsa", "rsa-sha2-512")


@pytest.mark.parametrize(
    ("known", "match"),
    [
        (None, "host key is unknown"),
        (OTHER_KEY, "REMOTE HOST IDENTIFICATION HAS CHANGED"),
    ],
)
def test_an_unknown_or_changed_host_key_is_refused_before_any_credential(
    listener, script, tmp_path, known, match
) -> None:
    files = [str(known_hosts(tmp_path, listener, known))] if known is not None else [str(tmp_path / "none")]
    with pytest.raises(PoolError, match=match) as info:
        connect(Connector(), target(listener, password="secret", known_hosts_files=files))
    assert info.value.kind is ErrorKind.HOSTKEY
    assert str(info.value).startswith(f"{listener[0]}:{listener[1]}: ")
    assert script.attempts == [] and not script.transports[0].active


def test_an_auto_added_host_key_is_recorded_and_not_counted_as_verified(listener, script, tmp_path) -> None:
    script.password = "secret"
    files = [str(tmp_path / "known_hosts")]
    pt = connect(Connector(), target(listener, password="secret", known_hosts_files=files, host_key_auto_add=True))
    assert not pt.host_key_verified
    assert HOST_KEY.get_base64() in Path(files[0]).read_text()


def test_with_host_key_checking_off_nothing_is_verified(listener, script) -> None:
    script.password = "secret"
    pt = connect(Connector(), target(listener, password="secret", host_key_checking=False))
    assert not pt.host_key_verified and script.attempts == ["password"]


def test_keys_first_within_the_budget_then_the_password(listener, script, tmp_path) -> None:
    script.password = "secret"
    # Encrypted with the password: the password is also tried as the passphrase.
    defaults = [key_file(tmp_path, paramiko.RSAKey.generate(1024), passphrase="secret") for _round in range(3)]
    t = target(
        listener,
        password="secret",
        host_key_checking=False,
        look_for_keys=True,
        default_key_files=defaults,
        max_auth_attempts=2,
    )
    pt = connect(Connector(), t)
    assert pt.transport.authenticated
    assert script.attempts == ["publickey", "publickey", "password"]  # two keys of three, then the password


def test_every_method_refused_is_one_auth_error(listener, script, tmp_path) -> None:
    t = target(
        listener, password="wrong", host_key_checking=False, private_key_file=key_file(tmp_path, passphrase="wrong")
    )
    with pytest.raises(PoolError, match=r"authentication failed for user 'deploy' \(2 method\(s\) tried\)") as info:
        connect(Connector(), t)
    assert info.value.kind is ErrorKind.AUTH and "\n" not in str(info.value)
    assert script.attempts == ["publickey", "password"]


def test_a_server_without_publickey_gets_the_password_at_once(listener, script, tmp_path) -> None:
    script.password, script.methods = "secret", ["password"]
    pt = connect(
        Connector(),
        target(
            listener,
            password="secret",
            host_key_checking=False,
            private_key_file=key_file(tmp_path, passphrase="secret"),
        ),
    )
    assert pt.transport.authenticated and script.attempts == ["password"]
    # Logged in: the auth handler no longer holds the password (nor the keyboard-interactive closure).
    handler = pt.transport.auth_handler
    assert (handler.password, handler.interactive_handler, handler.private_key) == (None, None, None)


def test_a_failed_login_is_remembered_and_not_retried_at_the_server(listener, script) -> None:
    connector = Connector()
    t = target(listener, password="wrong", host_key_checking=False)
    with pytest.raises(PoolError, match="authentication failed"):
        connect(connector, t)
    with pytest.raises(PoolError, match="not retried") as info:
        connect(connector, t)
    assert info.value.kind is ErrorKind.AUTH and script.handshakes == 1
    connector.forget_auth_failures(lambda key: True)
    with pytest.raises(PoolError, match="authentication failed"):
        connect(connector, t)
    assert script.handshakes == 2


def test_an_encrypted_key_without_its_passphrase_says_so(listener, script, tmp_path) -> None:
    path = key_file(tmp_path, passphrase="right")
    with pytest.raises(PoolError, match="is encrypted; set its passphrase") as info:
        connect(Connector(), target(listener, private_key_file=path, host_key_checking=False))
    assert info.value.kind is ErrorKind.AUTH and script.attempts == []
    script.keys = {CLIENT_KEY.get_base64()}
    pt = connect(
        Connector(), target(listener, private_key_file=path, private_key_passphrase="right", host_key_checking=False)
    )
    assert pt.transport.authenticated


def test_handshakes_dropped_before_the_banner_are_retried(listener, script) -> None:
    script.drops, script.password = 2, "secret"
    connector = Connector()
    pt = connect(connector, target(listener, password="secret", host_key_checking=False))
    assert pt.transport.authenticated and script.handshakes == 3
    # The server told us its limit: one handshake at a time to this address from now on.
    assert connector.limiter.limit(listener) == 1


def test_a_refused_port_is_one_clear_line(script) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    sock.close()  # nothing listens there now
    with pytest.raises(PoolError, match=r"connection refused; check that sshd is running") as info:
        connect(Connector(), target(address, password="x", timeout=0.5))
    assert info.value.kind is ErrorKind.CONNECT and script.handshakes == 0


class FakeLease:
    def __init__(self) -> None:
        self.released: List[bool] = []

    def release(self, *, broken: bool = False, refused: bool = False) -> None:
        self.released.append(broken)


def test_a_jump_host_target_goes_through_the_injected_tunnel(script) -> None:
    script.password = "secret"
    leases: List[FakeLease] = []

    def tunnel(t: Target, timeout: float) -> Tuple[Any, FakeLease]:
        leases.append(FakeLease())
        return object(), leases[-1]

    hop = {"host": "bastion", "addr": "192.0.2.1", "port": 22, "user": "jump"}
    t = target(("198.51.100.7", 22), password="secret", host_key_checking=False, proxy_jump=[JumpHop(**hop)])
    pt = connect(Connector(tunnel=tunnel), t)
    assert pt.via is leases[0] and leases[0].released == []
    pt.close()
    assert leases[0].released == [False]  # the bastion's slot goes back when the target transport closes
    # A failed login through the tunnel gives the slot back at once.
    with pytest.raises(PoolError, match="authentication failed"):
        connect(
            Connector(tunnel=tunnel),
            target(("198.51.100.7", 22), password="wrong", host_key_checking=False, proxy_jump=[JumpHop(**hop)]),
        )
    assert leases[1].released == [False]


def _unreadable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "known_hosts.d"
    path.mkdir()
    return str(path)


def _unreadable_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # The tests run as root, for whom no mode bit refuses a read: the refusal is the kernel's answer, faked.
    path = tmp_path / "known_hosts"
    path.write_text("")

    def refuse(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(_known_hosts, "open", refuse, raising=False)
    return str(path)


@pytest.mark.parametrize(
    ("make", "why"), [(_unreadable_directory, "Is a directory"), (_unreadable_permission, "Permission denied")]
)
def test_a_known_hosts_file_that_cannot_be_read_is_one_clear_line_before_any_connection(
    listener, script, tmp_path, monkeypatch, make, why
) -> None:
    path = make(tmp_path, monkeypatch)
    connector = Connector()
    with pytest.raises(PoolError) as info:
        connect(connector, target(listener, password="secret", known_hosts_files=[str(tmp_path / "none"), path]))
    assert info.value.kind is ErrorKind.HOSTKEY
    assert str(info.value).startswith(
        f"{listener[0]}:{listener[1]}: cannot read known_hosts file {path} ({why}); the host key cannot be checked"
    )
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert script.transports == []  # nothing was opened for a check that could not be made
    # The connector is fine for the next request (a readable file).
    script.password = "secret"
    good = tmp_path / "good"
    good.mkdir()
    pt = connect(connector, target(listener, password="secret", known_hosts_files=[str(known_hosts(good, listener))]))
    assert pt.host_key_verified


def test_a_host_key_that_cannot_be_recorded_still_connects(listener, script, tmp_path, caplog) -> None:
    script.password = "secret"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    files = [str(blocker / "known_hosts")]  # its directory is a file: nothing can be written there
    pt = connect(Connector(), target(listener, password="secret", known_hosts_files=files, host_key_auto_add=True))
    assert not pt.host_key_verified and pt.transport.authenticated
    assert "failed to add the host key ssh-rsa" in caplog.text and files[0] in caplog.text
