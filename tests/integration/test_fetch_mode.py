"""A fetched file gets the mode the ``ssh`` connection gives it: the remote file's permissions
(owner-writable) under the controller's umask, not the pool daemon's own 0077."""

from __future__ import annotations

import os
import stat

import pytest

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        content: "mode test\\n"
        dest: "/tmp/pooled-fetch-mode-{{ inventory_hostname }}"
        mode: "{{ remote_mode }}"
    - ansible.builtin.fetch:
        src: "/tmp/pooled-fetch-mode-{{ inventory_hostname }}"
        dest: "{{ local }}"
        flat: true
    - ansible.builtin.file:
        path: "/tmp/pooled-fetch-mode-{{ inventory_hostname }}"
        state: absent
"""


@pytest.mark.parametrize(
    ("remote_mode", "umask", "expected"),
    [
        ("0644", 0o022, 0o644),
        ("0640", 0o027, 0o640),
        ("0644", 0o077, 0o600),
    ],
)
def test_a_fetched_file_gets_the_mode_ssh_gives_it(
    make_fleet, make_runner, tmp_path, pool_dir, remote_mode, umask, expected
):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    local = tmp_path / "fetched.txt"
    # ansible-playbook and its workers inherit the umask of the process that starts them.
    old = os.umask(umask)
    try:
        result = runner.playbook(PLAY, inventory, "-e", f"remote_mode={remote_mode}", "-e", f"local={local}")
    finally:
        os.umask(old)
    assert result.rc == 0, result.output_tail()
    assert local.read_text() == "mode test\n"
    assert stat.S_IMODE(local.stat().st_mode) == expected, oct(local.stat().st_mode)
