#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: die like a broken module (a signal, or stderr and a bare exit), as its arguments say."""

from __future__ import annotations

import os
import signal
import sys

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"how": {"type": "str", "required": True}, "pidfile": {"type": "str"}})
    sys.stdout.write("partial output\n" if module.params["how"] != "hang" else f"pid={os.getpid()}\n")
    sys.stdout.flush()
    if module.params["pidfile"]:  # where a test finds the module's process (one that hangs, say)
        with open(module.params["pidfile"], "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
    if module.params["how"] == "hang":
        signal.pause()
    if module.params["how"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if module.params["how"] == "raise":
        raise RuntimeError("the module broke")
    sys.stderr.write("Traceback (most recent call last):\n  oops\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    main()
