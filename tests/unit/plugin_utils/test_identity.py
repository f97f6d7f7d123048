"""The pool key covers everything that decides whom we log in as and whom we trust; jump hosts get their own
credentials, never the target's."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _daemon
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import connection_spec, key_digests
from test_options import ENV, options


def _key(spec: dict) -> str:
    daemon = _daemon.Daemon.__new__(_daemon.Daemon)  # only the fingerprint: no socket, no thread
    daemon.salt = b"s" * 32
    return daemon._key(spec).cred


@pytest.mark.parametrize("change", [
    {"host_key_auto_add": True}, {"record_host_keys": False}, {"host_key_checking": False},
    {"known_hosts_file": "/other/known_hosts"}, {"look_for_keys": False},
], ids=lambda c: next(iter(c)))
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
    assert "second" not in str(after["key_digests"])  # a digest, never the content


def test_key_digests_skip_missing_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    assert list(key_digests([str(tmp_path / "a"), str(tmp_path / "missing"), None])) == [str(tmp_path / "a")]


def test_every_identity_field_is_a_field_the_worker_sends() -> None:
    spec = connection_spec(options(proxy_jump="bastion"), "web1", environ=ENV)
    assert set(_daemon.IDENTITY_FIELDS) <= set(spec)


def test_a_jump_host_never_gets_the_target_password_or_passphrase() -> None:
    spec = connection_spec(options(proxy_jump="ops@bastion", password="target-pw", private_key_passphrase="pp"),
                           "web1", environ=ENV)
    hop = spec["proxy_jump"][0]
    assert hop["password"] is None and "private_key_passphrase" not in hop
    assert hop["agent_socket"] == ENV["SSH_AUTH_SOCK"]  # the target's password turns the agent off, not the hop's
    assert spec["agent_socket"] is None


def test_proxy_jump_credentials_go_to_every_hop(tmp_path: Path) -> None:
    spec = connection_spec(options(proxy_jump="a,b", proxy_jump_password="hop-pw",
                                   proxy_jump_private_key_file=str(tmp_path / "hop_key")), "web1", environ=ENV)
    for hop in spec["proxy_jump"]:
        assert hop["password"] == "hop-pw" and hop["agent_socket"] is None
        assert hop["private_key_file"] == str(tmp_path / "hop_key")
