# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test module: say which of the payload's sources this task's interpreter compiled itself, and the
file names the code of its own functions and of a ``module_utils`` it imports late carries."""

from __future__ import annotations

import sys

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={})
    compiled = []
    sys.addaudithook(lambda event, args: compiled.append(str(args[1])) if event == "compile" else None)
    from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_thresholds as late

    module.exit_json(
        compiled=[name.split("_payload.zip/", 1)[1] for name in compiled if "_payload.zip/" in name],
        own=[__file__, main.__code__.co_filename],
        late=[late.__file__, late.rank.__code__.co_filename],
    )


if __name__ == "__main__":
    main()
