#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: report the process state a module starts with (what exec_leak changes, and more)."""

from __future__ import annotations

import os
import sys

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    umask = os.umask(0o022)
    os.umask(umask)
    module.exit_json(
        changed=False,
        leaked_global=hasattr(basic, "_EXECUTOR_LEAK"),
        leaked_env=os.environ.get("EXECUTOR_LEAK"),
        env=dict(os.environ),
        cwd=os.getcwd(),
        umask=umask,
        fds=sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:4],
        argv0=sys.argv[0],
        stdio=[sys.stdout.encoding, sys.stdout.errors, sys.stdout.line_buffering],
        stdin_eof=sys.stdin.read() == "",
        path=[p for p in sys.path if "ansible_" not in p],
        tamper=getattr(basic, "_TAMPER", None),
        marker=os.environ.get("EXECUTOR_MARKER"),
    )


if __name__ == "__main__":
    main()
