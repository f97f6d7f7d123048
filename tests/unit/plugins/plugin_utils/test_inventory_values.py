"""Inventory values that reach a proxy command line or known_hosts: refused as OpenSSH refuses them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _known_hosts as kh
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import (
    OptionError,
    check_user_name,
    connection_spec,
    expand_proxy_command,
)
from test_known_hosts import ED_KEY, ED_TYPE
from test_options import ENV, options

BAD_HOSTS = {
    "a space": "web1 -oProxyCommand=touch",
    "a newline": "web1\n[evil]:22",
    "a tab": "web1\tx",
    "a leading dash": "-oProxyCommand=touch /tmp/x",
    "a NUL": "web1\x00",
    "an escape": "web1\x1b[2J",
    "a shell metacharacter": "web1;touch",
    "a command substitution": "$(touch)",
    "a backquote": "`id`",
    "a brace": "{a,b}",
}


@pytest.mark.parametrize("value", list(BAD_HOSTS.values()), ids=list(BAD_HOSTS))
def test_bad_host_is_refused_naming_the_option(value: str) -> None:
    with pytest.raises(OptionError) as info:
        connection_spec(options(remote_addr=value), "web1", environ=ENV)
    message = str(info.value)
    assert message.startswith("remote_addr (ansible_host): the host name "), message
    assert repr(value) in message and "\n" not in message
    assert "OpenSSH refuses" in message


def test_inventory_name_is_checked_when_it_is_the_address() -> None:
    with pytest.raises(OptionError, match=r"starts with '-'"):
        connection_spec(options(), "-oProxyCommand=x", environ=ENV)


@pytest.mark.parametrize("value", ["deploy ops", "-l", "ops\n", "ops;id", "o`id`", "ops\x07"])
def test_bad_user_is_refused(value: str) -> None:
    with pytest.raises(OptionError) as info:
        connection_spec(options(remote_user=value), "web1", environ=ENV)
    assert str(info.value).startswith("remote_user (ansible_user): the user name "), info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "value", ["web1", "web-1.example.com", "192.0.2.1", "::1", "fe80::1%eth0", "host_a", "xn--bcher-kva.example"]
)
def test_ordinary_host_names_pass(value: str) -> None:
    assert connection_spec(options(remote_addr=value), "web1", environ=ENV)["addr"] == value


@pytest.mark.parametrize("value", ["deploy", "svc$", "DOMAIN\\ops", "first.last@corp", "a-b_c"])
def test_ordinary_user_names_pass(value: str) -> None:
    assert connection_spec(options(remote_user=value), "web1", environ=ENV)["user"] == value


def test_empty_user_is_refused() -> None:
    with pytest.raises(OptionError, match=r"^remote_user \(ansible_user\): the user name is empty"):
        check_user_name("remote_user (ansible_user)", "")


def test_bad_jump_host_user_is_refused() -> None:
    with pytest.raises(OptionError, match=r"^proxy_jump: the user name 'a;b' \(from jump host bastion\)"):
        connection_spec(options(proxy_jump="a;b@bastion"), "web1", environ=ENV)


def test_bad_host_from_ssh_config_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host web1\n    HostName -oProxyCommand=x\n")
    with pytest.raises(OptionError, match=r"from the HostName of ssh_config_file"):
        connection_spec(options(ssh_config_file=str(config)), "web1", environ=ENV)


# -- %h %p %r per argument ---------------------------------------------------------------


def test_substitution_happens_after_splitting() -> None:
    # What a space in ansible_host would have done before: add arguments to the proxy program.
    command = expand_proxy_command("ssh -W %h:%p bastion", "a b -oProxyCommand=x", 22, "ops")
    assert shlex.split(command) == ["ssh", "-W", "a b -oProxyCommand=x:22", "bastion"]


def test_each_argument_keeps_its_quoting() -> None:
    command = expand_proxy_command("nc -X connect -x 'proxy host:3128' %h %p", "web1", 2200, "ops")
    assert shlex.split(command) == ["nc", "-X", "connect", "-x", "proxy host:3128", "web1", "2200"]


def test_percent_escape_and_user() -> None:
    command = expand_proxy_command("run --rate=100%% -l %r %h", "web1", 22, "ops")
    assert shlex.split(command) == ["run", "--rate=100%", "-l", "ops", "web1"]


def test_spec_proxy_command_round_trips_through_shlex() -> None:
    spec = connection_spec(
        options(remote_addr="10.0.0.5", port=2200, remote_user="ops", proxy_command="ssh -W %h:%p -l %r bastion"),
        "web1",
        environ=ENV,
    )
    assert shlex.split(spec["proxy_command"]) == ["ssh", "-W", "10.0.0.5:2200", "-l", "ops", "bastion"]


def test_unbalanced_quotes_name_the_option() -> None:
    with pytest.raises(OptionError, match=r"^proxy_command: cannot split"):
        connection_spec(options(proxy_command="ssh 'bastion"), "web1", environ=ENV)


# -- known_hosts: never a name outside the strict set -------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "web1\n* ssh-ed25519 AAAA",
        "*",
        "!web1",
        "web1,evil",
        "|1|abc|def",
        "@revoked",
        "#web1",
        "web 1",
        "[web1]:22 x",
        "-web1",
        "[web1]:port",
        "",
    ],
)
def test_record_refuses_unsafe_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("")
    with pytest.raises(kh.UnsafeHostName):
        kh.record(str(path), name, ED_TYPE, ED_KEY)
    assert path.read_text() == ""


def test_record_refuses_an_odd_key_type_or_blob(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    with pytest.raises(kh.UnsafeHostName):
        kh.record(str(path), "web1", "ssh-ed25519\nx", ED_KEY)
    with pytest.raises(kh.UnsafeHostName):
        kh.record(str(path), "web1", ED_TYPE, "not base64!")
    assert not path.exists()


@pytest.mark.parametrize("name", ["web1", "[web1]:2222", "192.0.2.1", "[::1]:22", "fe80::1%eth0", "a_b.example"])
def test_record_accepts_ordinary_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "known_hosts"
    assert kh.record(str(path), name, ED_TYPE, ED_KEY) is True
    assert path.read_text() == f"{name} {ED_TYPE} {ED_KEY}\n"
