# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: say whether the code that ran is its sources' own, or code given in their place.

Neither this source nor ``basic``'s sets ``MARK`` to anything but None; code compiled from other
sources (``test_controller_bytecode.py``) sets it to ``"given"``."""

from __future__ import annotations

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule

MARK = None


def main() -> None:
    module = AnsibleModule(argument_spec={})
    module.exit_json(basic_mark=getattr(basic, "MARK", None), module_mark=MARK)


if __name__ == "__main__":
    main()
