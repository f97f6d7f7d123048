"""Long loops over one kept pool connection: every item gets its own output, none hangs.

A worker keeps its socket to the pool daemon across loop items. Frames that belong to an item
that already finished (the end of input sent after a ``sudo`` success marker, input the command
never read) must never be taken for the next item's request or answer it.
"""

from __future__ import annotations

import pwd
import re

import pytest
from harness.sshd import DEFAULT_PASSWORD, is_root, set_password
from test_become import _password_rule, sudoers  # noqa: F401 - the fixture  # pylint: disable=unused-import

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: sudoers drop-ins and login passwords")

ITEMS = 200
STDIN_ITEMS = 20

PLAY = f"""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: raw items
      ansible.builtin.raw: "echo item-{{{{ item }}}} uid-$(id -u)"
      become: "{{{{ item is even }}}}"
      loop: "{{{{ range({ITEMS}) | list }}}}"
    - name: stdin items
      ansible.builtin.command:
        cmd: cat
        stdin: "stdin-{{{{ item }}}}"
      become: "{{{{ item is even }}}}"
      loop: "{{{{ range({STDIN_ITEMS}) | list }}}}"
"""


def test_200_raw_items_alternating_sudo_and_20_with_stdin(
    make_fleet,
    make_runner,
    sudoers,  # noqa: F811 - the fixture imported above
    tmp_path,
    pool_dir,
):
    fleet = make_fleet(count=1)
    set_password(fleet.user, DEFAULT_PASSWORD)
    sudoers(_password_rule(fleet.user))
    user_uid = pwd.getpwnam(fleet.user).pw_uid
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml", group_vars={"ansible_become_password": DEFAULT_PASSWORD}
    )
    run = make_runner(fleet).run_json(PLAY, inventory, timeout=600)
    assert run.rc == 0, run.result.output_tail()
    raw = run.task("host1", "raw items")["results"]
    assert len(raw) == ITEMS
    for index, item in enumerate(raw):
        assert item["item"] == index and not item.get("failed") and not item.get("unreachable"), item
        uid = 0 if index % 2 == 0 else user_uid
        # With a pty the output ends in CRLF; sudo's prompt was consumed by the plugin.
        found = re.findall(r"item-\d+ uid-\d+", item["stdout"])
        assert found == [f"item-{index} uid-{uid}"], (index, item["stdout"])
    fed = run.task("host1", "stdin items")["results"]
    assert len(fed) == STDIN_ITEMS
    for index, item in enumerate(fed):
        assert item["item"] == index and item["rc"] == 0 and item["stdout"] == f"stdin-{index}", item
    assert fleet.hosts[0].accepted_count("publickey") == 1
