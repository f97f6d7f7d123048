# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build real AnsiballZ payloads with ansible-core's own module_common (run as a script, one process for all).

Usage: python build_payloads.py SPEC_JSON OUT_DIR, where SPEC_JSON maps a file name to
{"module": FQCN or module file path, "args": {...}, "interpreter": path}.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader, module_loader
    from ansible.template import Templar

    init_plugin_loader()
    specs = json.loads(sys.argv[1])
    for name, spec in specs.items():
        module = spec["module"]
        if os.path.isabs(module):
            path, short = module, os.path.splitext(os.path.basename(module))[0]
        else:
            context = module_loader.find_plugin_with_context(module)
            path, short = context.plugin_resolved_path, context.resolved_fqcn.split(".")[-1]
        built = modify_module(
            module_name=short,
            module_path=path,
            module_args=spec.get("args", {}),
            templar=Templar(loader=DataLoader()),
            task_vars={"ansible_python_interpreter": spec["interpreter"]},
        )
        with open(os.path.join(sys.argv[2], name), "wb") as f:
            f.write(built.b_module_data)


if __name__ == "__main__":
    main()
