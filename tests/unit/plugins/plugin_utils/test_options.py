"""Option resolution: plain dicts stand in for the plugin's get_option."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import (
    DEFAULT_KEYS,
    SECONDS_WITH_MS_ALIAS,
    SYSTEM_KNOWN_HOSTS,
    OptionError,
    connection_spec,
    daemon_settings,
    pool_settings,
    remote_executor_enabled,
    seconds,
    seconds_plain,
)
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import OnExhausted, PoolSettings, Priority
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.fields import rules
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.spec import ConnectionSpec

# The plugin's documented defaults (None where the option has no default).
DEFAULTS: Dict[str, Any] = {
    "remote_addr": None,
    "port": 22,
    "remote_user": "deploy",
    "password": None,
    "private_key_file": None,
    "private_key_passphrase": None,
    "look_for_keys": True,
    "host_key_checking": True,
    "host_key_auto_add": False,
    "record_host_keys": True,
    "known_hosts_file": "~/.ssh/known_hosts",
    "proxy_command": "",
    "timeout": None,
    "timeout_ms": None,
    "banner_timeout": 30,
    "use_rsa_sha2_algorithms": True,
    "max_handshakes_per_address": 6,
    "max_auth_attempts": 3,
    "max_connections": 5,
    "max_channels": 10,
    "idle_timeout": None,
    "idle_timeout_ms": None,
    "pool_wait_timeout": 60,
    "health_checks": True,
    "health_check_interval": None,
    "health_check_interval_ms": None,
    "keepalive_interval": None,
    "keepalive_interval_ms": None,
    "keepalive_max_missed": 3,
    "cleanup_interval": None,
    "cleanup_interval_ms": None,
    "on_exhausted": "wait",
    "priority": "normal",
    "pool_dir": "~/.ansible/pooled_ssh",
    "daemon_idle_timeout": 60,
}


def options(**overrides: Any) -> Callable[[str], Any]:
    values = dict(DEFAULTS, **overrides)

    def get_option(name: str) -> Any:
        # Like AnsiblePlugin.get_option: an unknown option is a KeyError, not None.
        return values[name]

    return get_option


ENV = {"SSH_AUTH_SOCK": "/run/agent.sock", "USER": "fallback"}


# -- seconds and the origin's millisecond aliases --------------------------------------


@pytest.mark.parametrize("name", sorted(SECONDS_WITH_MS_ALIAS))
def test_seconds_defaults_when_neither_is_set(name: str) -> None:
    assert seconds(options(), name) == SECONDS_WITH_MS_ALIAS[name]


def test_ms_alias_applies_when_seconds_unset() -> None:
    assert seconds(options(idle_timeout=None, idle_timeout_ms=5000), "idle_timeout") == 5.0
    assert seconds(options(health_check_interval_ms="30000"), "health_check_interval") == 30.0
    assert seconds(options(keepalive_interval_ms=2500), "keepalive_interval") == 2.5
    assert seconds(options(timeout_ms=1500.0), "timeout") == 1.5


def test_seconds_win_over_the_ms_alias() -> None:
    assert seconds(options(idle_timeout=120, idle_timeout_ms=5000), "idle_timeout") == 120.0
    assert seconds(options(timeout=7, timeout_ms=1), "timeout") == 7.0


def test_zero_seconds_is_not_treated_as_unset() -> None:
    assert seconds(options(idle_timeout=0, idle_timeout_ms=5000), "idle_timeout") == 0.0


@pytest.mark.parametrize(
    ("overrides", "name", "named"),
    [
        ({"idle_timeout": "soon"}, "idle_timeout", "idle_timeout"),
        ({"idle_timeout": [1]}, "idle_timeout", "idle_timeout"),
        ({"idle_timeout": -1}, "idle_timeout", "idle_timeout"),
        ({"idle_timeout_ms": "five"}, "idle_timeout", "idle_timeout_ms"),
        ({"idle_timeout_ms": -5000}, "idle_timeout", "idle_timeout_ms"),
        ({"timeout_ms": "x"}, "timeout", "timeout_ms"),
    ],
)
def test_malformed_seconds_raise_option_error_naming_the_option(
    overrides: Dict[str, Any], name: str, named: str
) -> None:
    with pytest.raises(OptionError) as info:
        seconds(options(**overrides), name)
    assert str(info.value).startswith(f"{named}: ")


def test_seconds_plain() -> None:
    assert seconds_plain(options(pool_wait_timeout="2.5"), "pool_wait_timeout") == 2.5
    with pytest.raises(OptionError, match=r"^pool_wait_timeout: expected a number of seconds"):
        seconds_plain(options(pool_wait_timeout=None), "pool_wait_timeout")
    with pytest.raises(OptionError, match=r"^pool_wait_timeout: must not be negative"):
        seconds_plain(options(pool_wait_timeout=-1), "pool_wait_timeout")


# -- pool settings ---------------------------------------------------------------------


def test_pool_settings_defaults() -> None:
    assert pool_settings(options()) == {
        "max_connections": 5,
        "max_channels": 10,
        "idle_timeout": 60.0,
        "wait_timeout": 60.0,
        "health_checks": True,
        "health_check_interval": 30.0,
        "keepalive_interval": 10.0,
        "keepalive_max_missed": 3,
        "cleanup_interval": 1.0,
        "priority": "normal",
        "on_exhausted": "wait",
    }


def test_pool_settings_priority_on_exhausted_and_the_cleanup_interval() -> None:
    got = pool_settings(options(priority="HIGH", on_exhausted="direct", cleanup_interval_ms=2500))
    assert (got["priority"], got["on_exhausted"], got["cleanup_interval"]) == ("high", "direct", 2.5)
    # what the daemon makes of them
    settings = PoolSettings.from_dict(got)
    assert settings.priority is Priority.HIGH and settings.on_exhausted is OnExhausted.DIRECT
    for bad, named in (({"priority": "urgent"}, "priority"), ({"on_exhausted": "retry"}, "on_exhausted")):
        with pytest.raises(OptionError, match=named):
            pool_settings(options(**bad))


def test_pool_settings_with_origin_aliases_and_strings() -> None:
    got = pool_settings(
        options(
            max_connections="20",
            idle_timeout_ms=300000,
            health_check_interval_ms=10000,
            keepalive_interval_ms=5000,
            health_checks=False,
            pool_wait_timeout=0,
        )
    )
    assert got["max_connections"] == 20
    assert got["idle_timeout"] == 300.0
    assert got["health_check_interval"] == 10.0
    assert got["keepalive_interval"] == 5.0
    assert got["health_checks"] is False
    assert got["wait_timeout"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": "many"}, "max_connections"),
        ({"max_channels": -3}, "max_channels"),
        ({"max_channels": None}, "max_channels"),
        ({"keepalive_max_missed": "x"}, "keepalive_max_missed"),
        ({"pool_wait_timeout": "forever"}, "pool_wait_timeout"),
        ({"idle_timeout": "1m"}, "idle_timeout"),
    ],
)
def test_malformed_pool_settings_name_the_option(overrides: Dict[str, Any], named: str) -> None:
    with pytest.raises(OptionError) as info:
        pool_settings(options(**overrides))
    assert str(info.value).startswith(f"{named}:")


def test_option_error_is_a_value_error() -> None:
    assert issubclass(OptionError, ValueError)


# -- connection spec -------------------------------------------------------------------


def test_connection_spec_defaults() -> None:
    spec = connection_spec(options(), "web1", environ=ENV)
    assert spec["host"] == "web1"
    assert spec["addr"] == "web1"
    assert spec["port"] == 22
    assert spec["user"] == "deploy"
    assert spec["password"] is None
    assert spec["private_key_file"] is None
    assert spec["look_for_keys"] is True
    assert spec["default_key_files"] == [os.path.expanduser(k) for k in DEFAULT_KEYS]
    assert spec["agent_socket"] == "/run/agent.sock"
    assert spec["host_key_checking"] is True
    assert spec["host_key_auto_add"] is False
    assert spec["record_host_keys"] is True
    assert spec["known_hosts_files"] == [os.path.expanduser("~/.ssh/known_hosts"), *SYSTEM_KNOWN_HOSTS]
    assert spec["timeout"] == 10.0
    assert spec["banner_timeout"] == 30.0
    assert spec["proxy_command"] is None
    assert spec["max_handshakes_per_address"] == 6
    assert spec["max_auth_attempts"] == 3


def test_remote_addr_port_and_key_file() -> None:
    spec = connection_spec(
        options(
            remote_addr="192.0.2.10",
            port="2222",
            private_key_file="~/keys/id",
            known_hosts_file="~/kh",
            timeout_ms=2500,
        ),
        "web1",
        environ=ENV,
    )
    assert spec["host"] == "web1"
    assert spec["addr"] == "192.0.2.10"
    assert spec["port"] == 2222
    assert spec["private_key_file"] == os.path.abspath(os.path.expanduser("~/keys/id"))
    assert spec["known_hosts_files"][0] == os.path.expanduser("~/kh")
    assert spec["timeout"] == 2.5


def test_relative_key_file_is_made_absolute_in_the_worker() -> None:
    spec = connection_spec(options(private_key_file="keys/id_ed25519"), "web1", environ=ENV)
    assert spec["private_key_file"] == os.path.join(os.getcwd(), "keys", "id_ed25519")


@pytest.mark.parametrize("port", ["ssh", 0, -1, 65536, "99999"])
def test_bad_port_names_the_option(port: Any) -> None:
    get = options(port=port)
    if port == 0:
        # 0 is "unset" for Ansible's int options: it falls back to 22.
        assert connection_spec(get, "h", environ=ENV)["port"] == 22
        return
    with pytest.raises(OptionError, match=r"^port: "):
        connection_spec(get, "h", environ=ENV)


def test_password_disables_the_agent_socket() -> None:
    spec = connection_spec(options(password="s3cret"), "web1", environ=ENV)
    assert spec["password"] == "s3cret"
    assert spec["agent_socket"] is None


def test_no_agent_socket_when_none_in_the_environment() -> None:
    assert connection_spec(options(), "web1", environ={})["agent_socket"] is None


def test_proxy_command_substitution() -> None:
    spec = connection_spec(
        options(remote_addr="10.0.0.5", port=2200, remote_user="ops", proxy_command="ssh -W %h:%p -l %r bastion # %h"),
        "web1",
        environ=ENV,
    )
    assert spec["proxy_command"] == "ssh -W 10.0.0.5:2200 -l ops bastion '#' 10.0.0.5"


def test_proxy_command_uses_the_inventory_host_when_no_address() -> None:
    spec = connection_spec(options(proxy_command="nc %h %p"), "web1", environ=ENV)
    assert spec["proxy_command"] == "nc web1 22"


def test_user_defaults_to_the_local_user() -> None:
    import pwd

    spec = connection_spec(options(remote_user=None), "web1", environ=ENV)
    assert spec["user"] == pwd.getpwuid(os.getuid()).pw_name


def test_malformed_connection_options_name_the_option() -> None:
    with pytest.raises(OptionError, match=r"^max_auth_attempts: "):
        connection_spec(options(max_auth_attempts=0), "h", environ=ENV)
    with pytest.raises(OptionError, match=r"^banner_timeout: "):
        connection_spec(options(banner_timeout="slow"), "h", environ=ENV)
    with pytest.raises(OptionError, match=r"^timeout: "):
        connection_spec(options(timeout="slow"), "h", environ=ENV)


def test_spec_carries_no_option_it_does_not_know() -> None:
    spec = connection_spec(options(), "web1", environ=ENV)
    assert set(spec) == {
        "host",
        "addr",
        "port",
        "user",
        "password",
        "private_key_file",
        "private_key_passphrase",
        "look_for_keys",
        "default_key_files",
        "agent_socket",
        "host_key_checking",
        "host_key_auto_add",
        "record_host_keys",
        "known_hosts_files",
        "timeout",
        "banner_timeout",
        "use_rsa_sha2_algorithms",
        "proxy_command",
        "max_handshakes_per_address",
        "max_auth_attempts",
        "key_fingerprint",
    }
    # Every field is one the daemon's declared spec knows (proxy_jump only when there are hops).
    assert set(spec) | {"proxy_jump"} == set(rules(ConnectionSpec))
    assert ConnectionSpec.from_wire(spec).host == "web1"


def test_the_key_file_content_is_fingerprinted(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_bytes(b"first key")
    first = connection_spec(options(private_key_file=str(key)), "web1", environ=ENV)["key_fingerprint"]
    key.write_bytes(b"second key")
    second = connection_spec(options(private_key_file=str(key)), "web1", environ=ENV)["key_fingerprint"]
    assert first and second and first != second
    key.unlink()
    assert connection_spec(options(private_key_file=str(key)), "web1", environ=ENV)["key_fingerprint"] is None


def test_daemon_settings() -> None:
    assert daemon_settings(options()) == ("~/.ansible/pooled_ssh", 60.0)
    assert daemon_settings(options(pool_dir=None, daemon_idle_timeout="5")) == ("~/.ansible/pooled_ssh", 5.0)
    with pytest.raises(OptionError, match=r"^daemon_idle_timeout: "):
        daemon_settings(options(daemon_idle_timeout="x"))


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("auto", True), ("AUTO ", True), (True, True), ("off", False), (" Off", False), (False, False)]
    + [(v, False) for v in ("false", "no", "0")],
)
def test_remote_executor_values(value: Any, enabled: bool) -> None:
    assert remote_executor_enabled(value) is enabled
