#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: leave every kind of process state behind (a global, an env var, a cwd, a umask, an fd)."""

from __future__ import annotations

import os

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    basic._EXECUTOR_LEAK = True  # type: ignore[attr-defined]
    os.environ["EXECUTOR_LEAK"] = "1"
    os.chdir("/")
    os.umask(0o000)
    os.open(os.devnull, os.O_RDONLY)
    module.exit_json(changed=False, left="behind")


if __name__ == "__main__":
    main()
