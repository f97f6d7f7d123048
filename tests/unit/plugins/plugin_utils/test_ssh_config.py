"""Jump host specs and the ssh_config keywords pooled_ssh honours, with their precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import OptionError, connection_spec
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._ssh_config import (
    JumpSpecError,
    lookup,
    parse_jump,
    resolve_hops,
)

DEFAULTS: Dict[str, Any] = {
    "remote_addr": None,
    "port": 22,
    "remote_user": None,
    "password": None,
    "private_key_file": None,
    "private_key_passphrase": None,
    "look_for_keys": True,
    "host_key_checking": True,
    "host_key_auto_add": False,
    "record_host_keys": True,
    "known_hosts_file": "~/.ssh/known_hosts",
    "proxy_command": "",
    "proxy_jump": None,
    "ssh_config_file": None,
    "timeout": None,
    "timeout_ms": None,
    "banner_timeout": 30,
    "use_rsa_sha2_algorithms": True,
    "max_handshakes_per_address": 6,
    "max_auth_attempts": 3,
}
ENV = {"USER": "local"}


def options(**overrides: Any) -> Callable[[str], Any]:
    values = dict(DEFAULTS, **overrides)
    return lambda name: values[name]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bastion", [("bastion", None, None)]),
        ("ops@bastion", [("bastion", None, "ops")]),
        ("ops@bastion:2222", [("bastion", 2222, "ops")]),
        ("bastion:2200", [("bastion", 2200, None)]),
        ("ssh://ops@bastion:2222", [("bastion", 2222, "ops")]),
        ("a@[2001:db8::1]:22", [("2001:db8::1", 22, "a")]),
        ("j1, u@j2:2022", [("j1", None, None), ("j2", 2022, "u")]),
    ],
)
def test_parse_jump(spec: str, expected: list) -> None:
    assert [(h["host"], h["port"], h["user"]) for h in parse_jump(spec)] == expected


@pytest.mark.parametrize("spec", [None, "", "none", " NONE "])
def test_no_jump(spec: Any) -> None:
    assert parse_jump(spec) == []


@pytest.mark.parametrize("spec", ["user@", "host:port", "a b", "host:0", "host:70000", "a,,b", "@host"])
def test_bad_jump_specs_name_the_hop(spec: str) -> None:
    with pytest.raises(JumpSpecError):
        parse_jump(spec)


def test_hops_default_to_port_22_and_the_target_user() -> None:
    hops = resolve_hops(parse_jump("j1,ops@j2:2022"), None, "deploy")
    assert [(h["addr"], h["port"], h["user"]) for h in hops] == [("j1", 22, "deploy"), ("j2", 2022, "ops")]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    key = tmp_path / "id_site"
    key.write_text("not really a key\n")
    path = tmp_path / "ssh_config"
    path.write_text(f"""
Host web1
    HostName 10.0.0.5
    User webops
    Port 2201
    IdentityFile {tmp_path}/missing_key
    IdentityFile {key}
    ProxyJump gate

Host legacy
    ProxyCommand nc -X connect %h %p

Host gate
    HostName 10.0.0.1
    Port 2022
    User gateops

Host *
    User fallback
""")
    return path


def test_lookup_returns_only_what_the_file_sets(config: Path, tmp_path: Path) -> None:
    found = lookup(str(config), "web1")
    assert found == {
        "hostname": "10.0.0.5",
        "user": "webops",
        "port": 2201,
        "identityfile": str(tmp_path / "id_site"),
        "proxyjump": "gate",
    }
    assert lookup(str(config), "elsewhere") == {"user": "fallback"}


def test_missing_config_file_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"^ssh_config_file: .* does not exist"):
        connection_spec(options(ssh_config_file=str(tmp_path / "nope")), "web1", environ=ENV)


def test_ssh_config_fills_what_the_inventory_left_unset(config: Path, tmp_path: Path) -> None:
    spec = connection_spec(options(ssh_config_file=str(config)), "web1", environ=ENV)
    assert (spec["addr"], spec["port"], spec["user"]) == ("10.0.0.5", 2201, "webops")
    assert spec["private_key_file"] == str(tmp_path / "id_site")
    # The jump host's alias is resolved through the same file; its user comes from its own entry,
    # and its key's fingerprint (none: no IdentityFile for the hop) is part of the hop's identity.
    assert spec["proxy_jump"] == [
        {
            "host": "gate",
            "addr": "10.0.0.1",
            "port": 2022,
            "user": "gateops",
            "password": None,
            "agent_socket": ENV.get("SSH_AUTH_SOCK"),
            "key_fingerprint": None,
        }
    ]
    assert spec["host"] == "web1"


def test_explicit_ansible_options_win(config: Path) -> None:
    spec = connection_spec(
        options(
            ssh_config_file=str(config),
            port=2999,
            remote_user="admin",
            private_key_file="/keys/id",
            proxy_command="nc %h %p",
        ),
        "web1",
        environ=ENV,
    )
    assert (spec["addr"], spec["port"], spec["user"], spec["private_key_file"]) == (
        "10.0.0.5",
        2999,
        "admin",
        "/keys/id",
    )
    assert spec["proxy_command"] == "nc 10.0.0.5 2999"
    assert "proxy_jump" not in spec  # an explicit proxy replaces the file's ProxyJump
    spec = connection_spec(options(ssh_config_file=str(config), proxy_jump="other:2200"), "web1", environ=ENV)
    assert spec["proxy_jump"][0]["addr"] == "other" and spec["proxy_jump"][0]["port"] == 2200


def test_ansible_host_is_the_name_looked_up(config: Path) -> None:
    spec = connection_spec(options(ssh_config_file=str(config), remote_addr="web1"), "inventory-name", environ=ENV)
    assert spec["addr"] == "10.0.0.5" and spec["host"] == "inventory-name"


def test_proxy_command_from_the_file(config: Path) -> None:
    spec = connection_spec(options(ssh_config_file=str(config)), "legacy", environ=ENV)
    assert spec["proxy_command"] == "nc -X connect legacy 22"


def test_no_config_file_means_no_lookup(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(config.parent))
    spec = connection_spec(options(remote_user="u"), "web1", environ=ENV)
    assert spec["addr"] == "web1" and spec["port"] == 22 and "proxy_jump" not in spec


def test_proxy_command_and_proxy_jump_together_are_refused() -> None:
    with pytest.raises(OptionError, match=r"^proxy_command and proxy_jump are both set"):
        connection_spec(options(proxy_command="nc %h %p", proxy_jump="j"), "web1", environ=ENV)


def test_bad_proxy_jump_names_the_option() -> None:
    with pytest.raises(OptionError, match=r"^proxy_jump: cannot parse jump host 'a b'"):
        connection_spec(options(proxy_jump="a b"), "web1", environ=ENV)


def test_spec_is_unchanged_without_the_new_options() -> None:
    """Callers that do not declare proxy_jump/ssh_config_file (older test doubles) still work."""
    values = {k: v for k, v in DEFAULTS.items() if k not in ("proxy_jump", "ssh_config_file")}
    spec = connection_spec(lambda name: values[name], "web1", environ=ENV)
    assert "proxy_jump" not in spec and spec["addr"] == "web1" and spec["port"] == 22
