"""The jump-host opener: bastion transports from the same pool, their own key, one slot per target."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.jump import JumpOpener
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import ErrorKind, PoolError
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.core import Pool
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.pool.settings import PoolSettings
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.connect import Target
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire.spec import ConnectionSpec, JumpHop
from daemon_fakes import FakeConnector
from fake_ssh import FakeServer

SALT = b"salt"
HOP_A = JumpHop(host="a", addr="192.0.2.1", port=22, user="jump")
HOP_B = JumpHop(host="b", addr="192.0.2.2", port=2222, user="jump2", private_key_file="/keys/b", key_fingerprint="fp")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    for t in s.transports:
        t.release_fds()


@pytest.fixture
def parts(server: FakeServer) -> Iterator[Any]:
    connector = FakeConnector(server)
    pool = Pool(connector)
    opener = JumpOpener(SALT)
    opener.attach(pool)
    yield opener, pool, connector
    pool.close_all()


def target(host: str, addr: str, *hops: JumpHop, **spec: Any) -> Target:
    fields: dict = {"password": "pw", "private_key_file": "/keys/target", **spec}
    return Target(
        ConnectionSpec(host=host, addr=addr, port=22, user="deploy", proxy_jump=list(hops), **fields), PoolSettings()
    )


def test_targets_behind_one_bastion_share_its_transport(parts, server) -> None:
    opener, pool, connector = parts
    _unused, lease1 = opener(target("web1", "10.0.0.1", HOP_A), 5)
    _unused, lease2 = opener(target("web2", "10.0.0.2", HOP_A), 5)
    assert len(server.transports) == 1 and lease1.entry is lease2.entry
    assert server.forwarded == [("10.0.0.1", 22), ("10.0.0.2", 22)]
    assert lease1.entry.key.label == "jump@a:22" and lease1.entry.in_use == 2
    (bastion,) = connector.targets
    assert (bastion.spec.host, bastion.spec.addr, bastion.spec.user, bastion.spec.proxy_jump) == (
        "a",
        "192.0.2.1",
        "jump",
        [],
    )
    assert bastion.spec.proxy_command is None
    lease1.release()
    lease2.release()
    assert pool.stats()["total"]["channelsInUse"] == 0


def test_a_chain_reaches_the_last_hop_through_the_ones_before(parts) -> None:
    opener, _pool, connector = parts
    opener(target("web1", "10.0.0.1", HOP_A, HOP_B), 5)
    (bastion,) = connector.targets
    # b is the last hop; it is itself reached through a (the connector's tunnel recurses for it).
    assert (bastion.spec.host, bastion.spec.port, bastion.spec.proxy_jump) == ("b", 2222, [HOP_A])
    # ssh_config gave b its own key: that one is used (and is part of the bastion's identity).
    assert (bastion.spec.private_key_file, bastion.spec.key_fingerprint) == ("/keys/b", "fp")


def test_a_bastion_trusted_otherwise_is_another_transport(parts, server) -> None:
    opener, _pool, _connector = parts
    _unused, lease1 = opener(target("web1", "10.0.0.1", HOP_A), 5)
    _unused, lease2 = opener(target("web2", "10.0.0.2", HOP_A, known_hosts_files=["/other/known_hosts"]), 5)
    assert lease1.entry is not lease2.entry and len(server.transports) == 2
    assert lease1.entry.key.cred != lease2.entry.key.cred


def test_forwarding_refused_by_the_bastion_is_a_clear_error_and_frees_the_slot(parts, server) -> None:
    opener, pool, _connector = parts
    server.refuse_forwarding = True
    with pytest.raises(PoolError, match="the jump host jump@a:22 refused to connect to it") as info:
        opener(target("web1", "10.0.0.1", HOP_A), 5)
    assert info.value.kind is ErrorKind.CONNECT and "AllowTcpForwarding yes" in str(info.value)
    assert str(info.value).startswith("10.0.0.1:22: ")
    assert pool.stats()["total"]["channelsInUse"] == 0


def test_an_opener_without_a_pool_says_so() -> None:
    with pytest.raises(PoolError, match="jump hosts need a pool"):
        JumpOpener(SALT)(target("web1", "10.0.0.1", HOP_A), 5)
