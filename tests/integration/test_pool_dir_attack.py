"""Another local user who can write to an ancestor of the pool directory gets nothing from the worker.

The attacker (a throwaway account) owns the pool directory's parent. When a worker starts using the
pool directory, it swaps the directory for its own and listens on the pool socket's name as a fake
daemon that records every byte. The worker must refuse that pool directory, send the fake nothing,
and fail the task with one line that names the directory and why.
"""

from __future__ import annotations

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.wire import frames as proto
from harness.ansible import stop_pool
from harness.attacker import HostileUser, PoolDirSwapper, remove_tree
from harness.sshd import DEFAULT_PASSWORD, ENCRYPTED_KEY_PASSPHRASE, is_root, short_tempdir

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: a second local user")

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: run
      ansible.builtin.command: id -un
"""


@pytest.fixture
def swapper(make_fleet):
    """The attack, torn down before the fleets (hence make_fleet): the swapper, any daemon, the user."""
    user = HostileUser()
    base = short_tempdir("ha-")
    attack = None
    try:
        attack = PoolDirSwapper(base, user)
        yield attack
    finally:
        if attack is not None:
            attack.stop()
            for directory in attack.pool_dirs():
                stop_pool(directory)
        remove_tree(base)
        user.remove()


def test_worker_refuses_a_pool_dir_another_uid_can_swap(make_fleet, make_runner, tmp_path, swapper):
    fleet = make_fleet(count=1, password=DEFAULT_PASSWORD, encrypted_key_passphrase=ENCRYPTED_KEY_PASSPHRASE)
    host = fleet.hosts[0]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        use_key=False,
        host_vars={
            "host1": {
                "ansible_password": DEFAULT_PASSWORD,
                "ansible_ssh_private_key_file": str(fleet.encrypted_key),
                "ansible_pooled_ssh_private_key_passphrase": ENCRYPTED_KEY_PASSPHRASE,
            }
        },
    )
    swapper.start(proto.socket_name(), proto.PROTOCOL_VERSION)

    run = make_runner(fleet, pool=swapper.pool_dir).run_json(PLAY, inventory, env={"SSH_AUTH_SOCK": None})

    received = swapper.received()
    leaked = [
        name
        for name, secret in (("login password", DEFAULT_PASSWORD), ("key passphrase", ENCRYPTED_KEY_PASSPHRASE))
        if secret.encode() in received
    ]
    assert not leaked, f"the fake daemon received the {', '.join(leaked)}; it saw {swapper.events()}"
    assert received == b"", f"the worker talked to the fake daemon: {swapper.events()}"
    assert run.rc != 0
    message = run.task("host1", "run")["msg"]
    assert "\n" not in message, message
    assert str(swapper.pool_dir) in message and f"uid {swapper.user.uid}" in message, message
    assert host.accepted_count() == 0
    assert "Traceback" not in run.result.stdout + run.result.stderr
