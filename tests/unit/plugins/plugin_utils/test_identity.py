"""The pool key covers everything that decides whom we log in as and whom we trust; jump hosts get their own
credentials, never the target's."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import connection_spec
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.spec import ConnectionSpec
from test_options import ENV, options


def _key(spec: dict) -> object:
    return ConnectionSpec.from_wire(spec).pool_key(b"s" * 32)


@pytest.mark.parametrize(
    "change",
    [
        {"host_key_auto_add": True},
        {"record_host_keys": False},
        {"host_key_checking": False},
        {"known_hosts_file": "/other/known_hosts"},
        {"look_for_keys": False},
    ],
    ids=lambda c: next(iter(c)),
)
def test_trust_settings_are_part_of_the_pool_key(change: dict) -> None:
    base = connection_spec(options(), "web1", environ=ENV)
    assert _key(base) != _key(connection_spec(options(**change), "web1", environ=ENV))


def test_the_agent_socket_is_part_of_the_pool_key() -> None:
    one = connection_spec(options(), "web1", environ=ENV)
    other = connection_spec(options(), "web1", environ=dict(ENV, SSH_AUTH_SOCK="/run/other.sock"))
    assert _key(one) != _key(other)


def test_a_key_file_rewritten_in_place_changes_the_pool_key(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("first")
    before = connection_spec(options(private_key_file=str(key)), "web1", environ=ENV)
    key.write_text("second")
    after = connection_spec(options(private_key_file=str(key)), "web1", environ=ENV)
    assert before["private_key_file"] == after["private_key_file"]
    assert _key(before) != _key(after)


def test_a_jump_host_never_gets_the_target_password_or_passphrase() -> None:
    spec = connection_spec(
        options(proxy_jump="ops@bastion", password="target-pw", private_key_passphrase="pp"), "web1", environ=ENV
    )
    hop = spec["proxy_jump"][0]
    assert hop["password"] is None and "private_key_passphrase" not in hop
    assert hop["agent_socket"] == ENV["SSH_AUTH_SOCK"]  # the target's password turns the agent off, not the hop's
    assert spec["agent_socket"] is None


def test_proxy_jump_credentials_go_to_every_hop(tmp_path: Path) -> None:
    spec = connection_spec(
        options(proxy_jump="a,b", proxy_jump_password="hop-pw", proxy_jump_private_key_file=str(tmp_path / "hop_key")),
        "web1",
        environ=ENV,
    )
    for hop in spec["proxy_jump"]:
        assert hop["password"] == "hop-pw" and hop["agent_socket"] is None
        assert hop["private_key_file"] == str(tmp_path / "hop_key")


def test_the_bastion_spec_carries_only_the_hop_credentials(tmp_path: Path) -> None:
    spec = ConnectionSpec.from_wire(
        connection_spec(
            options(proxy_jump="ops@bastion", password="target-pw", private_key_passphrase="pp"), "web1", environ=ENV
        )
    )
    bastion = spec.bastion()
    assert (bastion.password, bastion.private_key_passphrase) == (None, None)
    assert bastion.agent_socket == ENV["SSH_AUTH_SOCK"] and bastion.user == "ops"
    with_password = ConnectionSpec.from_wire(
        connection_spec(
            options(proxy_jump="bastion", password="target-pw", proxy_jump_password="hop-pw"), "web1", environ=ENV
        )
    ).bastion()
    assert with_password.password == "hop-pw" and with_password.agent_socket is None
